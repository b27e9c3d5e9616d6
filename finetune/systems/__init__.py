"""Systems: every kind of model the workbench runs, behind one interface (`base.Kind`).

One module per kind, named after its registry key (`registry.KINDS`): `causal_lm`, `seq2seq`,
`encoder`, `tagger`, `tfidf`, `run`, `endpoint` (with its client, `endpoint_client`) and
`engine`. The evaluator, and every stage after it, only calls `registry` and the interface.
"""
