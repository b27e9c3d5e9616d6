"""The recipe schema: typed, frozen sections that mirror the pipeline's stages.

Every default and every piece of help text lives here. `finetune/docs.py` renders this schema
into docs/recipe-reference.md, `recipe/checks.py` checks what spans several fields, and
`recipe/load.py` turns validation failures into messages naming the file and the dotted key.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

TaskType = Literal["classification", "extraction", "qa"]


def _field(default: Any = ..., help: str = "", *, synonyms: tuple[str, ...] = (), **kw: Any) -> Any:
    """A pydantic Field whose help text is required and whose synonyms feed "did you mean"."""
    extra = {"synonyms": list(synonyms)} if synonyms else None
    return Field(default, description=help, json_schema_extra=extra, **kw)


class Section(BaseModel):
    """Base for every recipe section: unknown keys are errors and values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


PositiveInt = Annotated[int, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


class TaskConfig(Section):
    type: TaskType = _field(
        help="What the model learns to do: `classification`, `extraction` (entity spans) or `qa` (free-text answers).",
        synonyms=("kind", "task_type"),
    )
    labels: list[str] = _field(
        [],
        help="The label set for classification, as the model should write each label. Required when `type` is `classification`. For extraction, optionally the entity types a token classifier learns, in order (empty: every type in the training and validation data).",
        synonyms=("classes", "label_set"),
    )
    instruction: str = _field(
        "",
        help="The instruction shown to the model before each input, e.g. 'Is this review positive or negative?'. For classification, name every label in it: a model that was not trained on the task learns the answers it may give from here alone (see `list_labels`; loading warns otherwise).",
        synonyms=("system_prompt", "prompt"),
    )
    template: str = _field(
        "{instruction}\n\n{input}\n\nAnswer:",
        help="Prompt template used when the tokenizer has no chat template. Placeholders: `{instruction}`, `{input}`.",
        synonyms=("prompt_template",),
    )
    list_labels: Literal["auto", "always", "never"] = _field(
        "auto",
        help="Classification: whether the untrained systems (zero- and few-shot baselines: local models, engines, endpoints) see the label list appended to the instruction, one label a line after 'Answer with one of these labels:'. `auto`: when the instruction does not name every label; `always`; `never`. The specialist, and any other trained run, keeps the prompt it was trained on, without the list.",
        synonyms=("show_labels", "label_list"),
    )


class SplitConfig(Section):
    train: Fraction = _field(0.8, help="Fraction of rows used for training.")
    validation: Fraction = _field(
        0.1,
        help="Fraction of rows used for held-out loss during training.",
        synonyms=("val", "valid", "dev"),
    )
    test: Fraction = _field(
        0.1, help="Fraction of rows used for the final comparison.", synonyms=("eval",)
    )


class TeacherConfig(Section):
    system: str = _field(
        help="The `eval.baselines` entry, by name, that labels the rows: any general system a baseline can be (an engine, an endpoint, a local model), prompted and scored as that baseline is. It is evaluated as a baseline too, so the report sets the student against its teacher.",
        synonyms=("baseline", "model", "name"),
    )
    rows: Literal["unlabelled", "train"] = _field(
        "unlabelled",
        help="What the teacher labels. `unlabelled`: the rows of `data.unlabelled`, added to the training split's human-labelled rows. `train`: the training split's own rows (after `max_train_examples`), their human labels hidden from the teacher and kept only to score it, so that the student learns from the teacher alone.",
        synonyms=("label", "source"),
    )
    max_rows: PositiveInt | None = _field(
        None,
        help="With `rows: unlabelled`, label only the first this many rows of `data.unlabelled` (null: all).",
        synonyms=("max_unlabelled", "limit"),
    )
    min_confidence: Fraction = _field(
        0.0,
        help="Classification: keep a row only when the teacher's probability for its label (its label scores normalized over the labels) is at least this. A teacher that generates its answer gives no probability, so it needs 0.",
        synonyms=("confidence", "threshold"),
    )
    balance: bool = _field(
        False,
        help="Classification: keep as many rows of each label as the teacher gave the rarest label, the most confident first.",
        synonyms=("balanced",),
    )
    targets: Literal["hard", "soft"] = _field(
        "hard",
        help="`hard`: the student learns the teacher's label. `soft`: it learns the teacher's label distribution (its label scores over `temperature`), for classifier heads and for a decoder's label tokens.",
        synonyms=("target", "labels"),
    )
    temperature: Annotated[float, Field(gt=0)] = _field(
        1.0,
        help="With `targets: soft`: the teacher's label scores are divided by this before normalizing; above 1 flattens the distribution.",
        synonyms=("T", "temp"),
    )
    margin: Fraction = _field(
        0.02,
        help="The student keeps the teacher's quality when the paired lower confidence bound of (student - teacher) on the primary metric is above minus this.",
        synonyms=("non_inferiority_margin",),
    )


class DataConfig(Section):
    source: str | None = _field(
        None,
        help="A built-in dataset name (`finetune prepare --list`), a local JSONL/CSV/Parquet file, or a Hugging Face Hub dataset id. Give this or `split_files`.",
        synonyms=("dataset", "path", "name"),
    )
    split_files: dict[Literal["train", "validation", "test"], str] = _field(
        {},
        help="Explicit split files instead of `source` + `split`: `{train: a.jsonl, test: b.jsonl}` and optionally `validation` (else carved from train by `split.validation`).",
        synonyms=("files", "splits_from"),
    )
    fields: dict[str, str] = _field(
        {},
        help="Maps the workbench's field names (`text`, `label`, `question`, `answer`, `id`) to the source's column names, e.g. `{text: review, label: sentiment}`.",
        synonyms=("columns", "field_map", "mapping"),
    )
    label_map: dict[str, str] = _field(
        {},
        help="Renames source labels to the task's labels, e.g. `{'1': positive, '0': negative}`.",
        synonyms=("labels_map",),
    )
    split: SplitConfig = _field(
        SplitConfig(),
        help="Train/validation/test fractions for the deterministic stratified split.",
        synonyms=("splits",),
    )
    max_train_examples: PositiveInt | None = _field(
        None,
        help="Cap on training rows after the split (null: use all). The rows are drawn by the recipe's `seed` with each label's share kept (to within one row), and nested: the first 50 are among the first 100, so a learning curve measures data size rather than the luck of the draw.",
        synonyms=("max_examples", "limit"),
    )
    split_seed: Annotated[int, Field(ge=0)] | None = _field(
        None,
        help="Seed of the train/validation/test split (null: the recipe's `seed`). Fixing it lets `seed` vary, and with it the training rows drawn and the training itself, while every run is tested on the same items; an experiment that varies `seed` fixes it to its base recipe's seed.",
        synonyms=("split_random_seed", "data_seed"),
    )
    max_validation_examples: PositiveInt | None = _field(
        None,
        help="Cap on validation rows used for the held-out loss during training (null: use all).",
        synonyms=("max_val_examples", "max_eval_examples"),
    )
    max_test_examples: PositiveInt | None = _field(
        None, help="Cap on test rows used for evaluation (null: use all)."
    )
    on_bad_row: Literal["error", "skip"] = _field(
        "error",
        help="What to do with a malformed or invalid row: `error` stops with file:line; `skip` drops it, counts it and writes it to a rejects file.",
    )
    prepared_dir: str = _field(
        "data",
        help="Where prepared datasets are written (`<prepared_dir>/<dataset name>/`).",
        synonyms=("data_dir", "out_dir"),
    )
    dedupe: bool = _field(
        False,
        help="Remove train rows that duplicate (or nearly duplicate) validation or test rows.",
        synonyms=("deduplicate",),
    )
    unlabelled: str | None = _field(
        None,
        help="A local JSONL/CSV/Parquet file of rows without labels, read with `fields`, for `teacher` to label (rows that repeat a validation or test text are dropped).",
        synonyms=("unlabeled", "unlabelled_file"),
    )
    teacher: TeacherConfig | None = _field(
        None,
        help="A general system that labels training rows for the specialist (null: human labels only). `finetune teach` labels, and `finetune train` and experiments run it first; its answers are kept, so a repeated or killed labelling never asks twice.",
        synonyms=("labeller", "labeler", "distill"),
    )


class QLoRAConfig(Section):
    quant_type: Literal["nf4", "fp4"] = _field(
        "nf4", help="4-bit data type for the frozen base weights."
    )
    double_quant: bool = _field(
        True,
        help="Quantize the quantization constants too (saves ~0.4 bit per parameter).",
        synonyms=("double_quantization",),
    )
    compute_dtype: Literal["bfloat16", "float16", "float32"] = _field(
        "bfloat16", help="Dtype that 4-bit layers compute in."
    )


class ModelConfig(Section):
    base: str = _field(
        help="The base model: a built-in registry name (see `finetune models`), a local directory, or a Hugging Face Hub id.",
        synonyms=("name", "model", "id", "path", "name_or_path"),
    )
    head: Literal[
        "auto", "causal-lm", "seq2seq-lm", "sequence-classification", "token-classification"
    ] = _field(
        "auto",
        help="What is trained on the base. `causal-lm`: the model writes the answer after the prompt (TRL's SFTTrainer; every task type). `seq2seq-lm`: an encoder-decoder (T5, Flan-T5, BART; `AutoModelForSeq2SeqLM`) reads the prompt and its decoder writes the answer, trained on the answer's cross-entropy with transformers' Trainer; every task type (classification scores each label's log-likelihood as the decoder's output). `sequence-classification`: a classification head reads the input text alone (no instruction or template; cut to `max_length` tokens at the `truncation` end) and scores `task.labels`; classification tasks only. `token-classification`: a head tags each word of the text in IOB2 (the first sub-word token of each word labelled), decoded to entity spans; extraction tasks only, needs a fast tokenizer. Both classifier heads are trained on their cross-entropy with transformers' Trainer, with `lora` (adapters plus the new head) or `full`. `auto`: for an encoder base (BERT family: registry role `encoder`, or a config that is neither a decoder nor a causal LM) `sequence-classification` for classification and `token-classification` for extraction, an encoder-decoder (a config with `is_encoder_decoder`) `seq2seq-lm`, else `causal-lm`.",
        synonyms=("objective", "task_head", "model_head"),
    )
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = _field(
        "auto",
        help="Weight and compute dtype. `auto`: bfloat16 where the hardware runs it fast (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else float32.",
        synonyms=("torch_dtype", "precision"),
    )
    quantization: Literal["none", "8bit", "4bit"] = _field(
        "none",
        help="Load the frozen base through bitsandbytes: `8bit`, or `4bit` for QLoRA (GPU only: 4-bit LoRA gradients are zero on CPU).",
        synonyms=("quantize", "load_in", "bits"),
    )
    qlora: QLoRAConfig = _field(
        QLoRAConfig(),
        help="4-bit settings, used when `quantization` is `4bit`.",
        synonyms=("bnb", "bnb_4bit"),
    )
    max_length: PositiveInt = _field(
        512,
        help="Maximum tokens per example (prompt plus answer) in training and evaluation.",
        synonyms=("max_seq_length", "seq_len", "context_length"),
    )
    truncation: Literal["left", "right"] = _field(
        "left",
        help="Which end of an over-long prompt is cut: `left` keeps the end of the input next to the answer.",
        synonyms=("truncation_side",),
    )
    trust_remote_code: bool = _field(
        False,
        help="Allow running Python code shipped with a model repository. Off by default; turning it on prints a warning.",
    )
    allow_pickle: bool = _field(
        False,
        help="Allow loading pickled (`.bin`/`.pt`) weight files, which can execute code. Safetensors are always preferred.",
    )
    check_memory: bool = _field(
        True,
        help="Before loading, estimate from the model's config the memory its weights (and, for full fine-tuning, gradients and optimizer state) need, and refuse when this machine has less free.",
        synonyms=("memory_check",),
    )


class LoRAConfig(Section):
    r: PositiveInt = _field(16, help="LoRA rank.", synonyms=("rank",))
    alpha: PositiveInt = _field(
        32,
        help="LoRA scaling numerator (`lora_alpha`); the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA).",
        synonyms=("lora_alpha",),
    )
    dropout: Fraction = _field(
        0.0,
        help="Dropout on the LoRA input (PEFT's default is 0 too). Above 0 it draws a random mask for every adapted layer's input, about a quarter of each CPU training step, for a regularizer that matters little in runs of an epoch or two.",
        synonyms=("lora_dropout",),
    )
    target_modules: Literal["all-linear"] | list[str] = _field(
        "all-linear",
        help="Which linear layers get adapters: `all-linear` or a list of module names such as `[q_proj, v_proj]`.",
        synonyms=("targets", "modules"),
    )
    use_rslora: bool = _field(
        False, help="Rank-stabilized LoRA scaling (alpha/sqrt(r)).", synonyms=("rslora",)
    )
    use_dora: bool = _field(False, help="Weight-decomposed LoRA (DoRA).", synonyms=("dora",))


class TrainConfig(Section):
    method: Literal["lora", "full"] = _field(
        "lora",
        help="`lora` trains adapters on a frozen (optionally quantized) base; `full` updates every weight (small models only).",
        synonyms=("mode", "strategy"),
    )
    epochs: Annotated[float, Field(gt=0)] = _field(
        1.0,
        help="Passes over the training set (ignored when `max_steps` is set).",
        synonyms=("num_epochs", "num_train_epochs", "n_epochs"),
    )
    max_steps: PositiveInt | None = _field(
        None, help="Stop after this many optimizer steps (null: use `epochs`).", synonyms=("steps",)
    )
    min_steps: PositiveInt | None = _field(
        None,
        help="Train at least this many optimizer steps: a small training set gets more passes (`epochs` raised to reach it), so every size of a learning curve learns from as many updates at least (ignored when `max_steps` is set). Null: `epochs` as given.",
        synonyms=("least_steps",),
    )
    batch_size: PositiveInt = _field(
        8,
        help="Examples per device per forward pass.",
        synonyms=("per_device_train_batch_size", "bs", "micro_batch_size"),
    )
    gradient_accumulation_steps: PositiveInt = _field(
        1,
        help="Forward passes per optimizer step; the effective batch is batch_size x this x processes.",
        synonyms=("grad_accum", "accumulation_steps"),
    )
    learning_rate: Annotated[float, Field(gt=0, le=1.0)] = _field(
        2e-4, help="Peak learning rate.", synonyms=("lr",)
    )
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _field(
        "cosine",
        help="Learning-rate schedule after warm-up.",
        synonyms=("scheduler", "lr_scheduler_type"),
    )
    warmup_ratio: Fraction = _field(
        0.05,
        help="Fraction of steps spent warming the learning rate up from 0.",
        synonyms=("warmup",),
    )
    weight_decay: Annotated[float, Field(ge=0)] = _field(0.0, help="AdamW weight decay.")
    max_grad_norm: Annotated[float, Field(gt=0)] = _field(
        1.0, help="Gradient clipping norm.", synonyms=("grad_clip", "clip_grad_norm")
    )
    completion_only: bool = _field(
        True,
        help="Compute the loss on the answer tokens only; prompt tokens are masked.",
        synonyms=("completion_only_loss", "train_on_completions"),
    )
    packing: bool = _field(
        False,
        help="Pack several examples into each sequence without padding (attention kept within each example).",
    )
    padding_free: bool = _field(
        False,
        help="Concatenate each batch into one row without padding (attention kept within each example); unlike `packing`, batches keep their examples.",
    )
    group_by_length: bool = _field(
        False,
        help="Batch examples of similar length together: less padding, 1.14x faster on the sentiment recipe (`make bench`), but there it also ended at a worse validation loss (0.129 against 0.102) and accuracy (0.747 against 0.828); the order of batches stays random.",
        synonyms=("length_grouping", "train_sampling_strategy"),
    )
    gradient_checkpointing: bool = _field(
        False,
        help="Recompute activations in the backward pass: less memory, about 1.65x slower on CPU.",
    )
    attention: Literal["auto", "eager", "sdpa", "flash_attention_2"] = _field(
        "auto",
        help="Attention kernel while training. `auto`: `eager` on a CPU training in bf16 when nine in ten examples are at most 192 tokens, where PyTorch's fused attention has a slow bf16 backward (1.2x faster training on the sentiment recipe); else transformers' default (`sdpa`), which is as fast from 256 tokens, 1.4x faster at 512, and does not hold length-squared attention scores.",
        synonyms=("attn_implementation",),
    )
    compile: bool = _field(
        False,
        help="Compile each decoder layer with torch.compile (one graph shared by all layers): 1.5x faster bf16 steps on CPU, but compiling takes ~30 s on a first run (torch caches it for later ones), so it pays on runs of a few hundred steps. Needs a C++ compiler on CPU.",
        synonyms=("torch_compile",),
    )
    eval_every: PositiveInt = _field(
        50,
        help="Compute held-out validation loss every this many steps.",
        synonyms=("eval_steps", "eval_interval"),
    )
    save_every: PositiveInt = _field(
        50,
        help="Write a resumable checkpoint every this many steps.",
        synonyms=("save_steps", "checkpoint_every"),
    )
    early_stopping_patience: PositiveInt | None = _field(
        None,
        help="Stop when validation loss has not improved for this many evaluations (null: never).",
        synonyms=("patience", "early_stopping"),
    )
    budget_minutes: Annotated[float, Field(gt=0)] | None = _field(
        None,
        help="Wall-clock budget; training stops cleanly (and saves) when it is spent.",
        synonyms=("time_budget", "max_minutes"),
    )
    logging_steps: PositiveInt = _field(
        5, help="Log training loss every this many steps.", synonyms=("log_every",)
    )


class EndpointConfig(Section):
    base_url: str = _field(
        help="The OpenAI-compatible API's base URL, e.g. `https://api.openai.com/v1`, or `http://127.0.0.1:8000/v1` for `vllm serve` or llama.cpp's server.",
        synonyms=("url", "api_base", "base"),
    )
    model: str = _field(
        help="The model name the server knows (its `/models` list), e.g. `gpt-4o-mini`.",
        synonyms=("name", "model_name"),
    )
    api_key_env: str = _field(
        "OPENAI_API_KEY",
        help="The name of the environment variable that holds the API key. The key itself never goes in a recipe, and is written to no run directory, log or report.",
        synonyms=("key_env", "api_key", "key"),
    )
    scoring: Literal["auto", "prompt_logprobs", "top_logprobs", "generate"] = _field(
        "auto",
        help="How a classification answer is scored. `prompt_logprobs`: the exact log-likelihood of each label after the prompt, from completions with `echo` (vLLM returns it; a server that scores tokens at the wrong position, such as llama-cpp-python 0.3.36, is detected by a probe and refused). `top_logprobs`: each label's first answer token among the chat answer's `top_logprobs` alternatives (a label not listed counts as below the smallest listed log-probability). `generate`: a greedy answer matched to a label exactly after normalization (case, surrounding punctuation and whitespace); any other answer is invalid and counts as wrong. `auto` probes the server once and takes the first of these it supports. QA and extraction always generate.",
        synonyms=("method", "scoring_method"),
    )
    top_logprobs: Annotated[int, Field(ge=1, le=20)] = _field(
        20, help="Alternatives asked for with `scoring: top_logprobs` (OpenAI allows at most 20)."
    )
    concurrency: PositiveInt = _field(
        4, help="Requests in flight at once.", synonyms=("workers", "parallel")
    )
    timeout_seconds: Annotated[float, Field(gt=0)] = _field(
        60.0, help="Seconds to wait for one response before it is retried.", synonyms=("timeout",)
    )
    max_retries: Annotated[int, Field(ge=0)] = _field(
        5,
        help="Retries of a request after a 429, a 5xx, a connection error or a timeout, with exponential backoff and jitter, honouring `Retry-After`. An item still failing after them is marked failed, counted and scored wrong, never dropped.",
        synonyms=("retries",),
    )
    requests_per_minute: PositiveInt | None = _field(
        None, help="Requests started per minute at most (null: no limit).", synonyms=("rpm",)
    )
    max_usd: Annotated[float, Field(gt=0)] | None = _field(
        None,
        help="Spend cap for this system in one evaluation, from the usage the API returns and the token prices in `eval.prices` under this baseline's name: evaluation stops with a message before a request whose estimated cost (its prompt and its token limit) would pass it. Answers already paid for are cached. Null: no cap.",
        synonyms=("budget_usd", "spend_cap", "max_cost"),
    )


class EngineConfig(Section):
    model: str = _field(
        help="The GGUF to serve, quantized as shipped: a registry model that ships as GGUF (`qwen2.5-coder-1.5b-instruct`, `qwen2.5-coder-0.5b-instruct`, `smollm2-135m-instruct`, `gemma3-270m`) or a path to a `.gguf` file.",
        synonyms=("gguf", "base", "model_name"),
    )
    context: Annotated[int, Field(ge=256)] = _field(
        4096,
        help="Context window in tokens (llama.cpp's `n_ctx`): the longest prompt with its shots and answer must fit. Its key/value cache is allocated at load.",
        synonyms=("n_ctx", "context_length", "max_length"),
    )
    threads: PositiveInt | None = _field(
        None,
        help="CPU threads (llama.cpp's `n_threads`; null: every core this process may use).",
        synonyms=("n_threads", "cpus"),
    )
    gpu_layers: Annotated[int, Field(ge=-1)] = _field(
        0,
        help="Layers offloaded to a GPU (`n_gpu_layers`; -1: all). Needs llama-cpp-python built with CUDA (see docs/baselines.md); the CPU build ignores it.",
        synonyms=("n_gpu_layers", "gpu"),
    )


class BaselineConfig(Section):
    name: str = _field(help="Label for this system in the report.")
    model: str = _field(
        "base",
        help="`base` for the untuned base model, or any model reference (registry name, local directory, Hub id).",
        synonyms=("base", "model_name"),
    )
    shots: Annotated[int, Field(ge=0)] = _field(
        0,
        help="In-context examples drawn from train with the recipe's seed.",
        synonyms=("k", "few_shot", "num_shots"),
    )
    prompt_style: Literal["auto", "chat", "plain"] = _field(
        "auto",
        help="`chat` uses the model's chat template, `plain` the recipe's template, `auto` chat when the tokenizer has one.",
        synonyms=("style", "format"),
    )
    run: str | None = _field(
        None,
        help="Another finished run (`runs/<recipe>/<id>`) whose specialist joins the comparison, served as its own recipe serves it: an encoder classifier, another LoRA specialist. It must have been trained on the same prepared data (same fingerprint) for the same task and labels. Leave `model`, `shots` and `prompt_style` unset with it.",
        synonyms=("run_dir", "specialist"),
    )
    endpoint: EndpointConfig | None = _field(
        None,
        help="A model behind an OpenAI-compatible API (a hosted model, or `vllm serve` / llama.cpp's server) instead of local weights, prompted in chat form with the recipe's instruction and `shots`. Token prices go in `eval.prices` under this baseline's name. Leave `model`, `run` and `prompt_style` unset with it.",
        synonyms=("api", "server"),
    )
    engine: EngineConfig | None = _field(
        None,
        help="A big general model run here by llama.cpp (llama-cpp-python, in this process) from its GGUF as shipped, 4-bit rather than de-quantized: Qwen2.5-Coder-1.5B takes about 1.2 GB instead of about 9 GB in float32. Prompted like a local model (`prompt_style`, `shots`, the GGUF's chat template); classification scores each label's exact log-likelihood. Leave `model`, `run` and `endpoint` unset with it.",
        synonyms=("llama_cpp", "gguf", "llamacpp"),
    )

    # Every baseline has a name and may take these; each other field makes the baseline a kind
    # of system of its own (`finetune.systems`) and holds that kind's settings.
    SHARED: ClassVar[tuple[str, ...]] = ("name", "model", "shots", "prompt_style")
    # What each kind's field rules out beside it, and why (checked in `recipe.checks`).
    EXCLUDES: ClassVar[dict[str, tuple[tuple[str, ...], str]]] = {
        "endpoint": (
            ("model", "prompt_style", "run"),
            "an endpoint baseline is the model behind its API",
        ),
        "engine": (
            ("model", "run", "endpoint"),
            "an engine baseline runs the model named in its `engine.model`",
        ),
        "run": (
            ("model", "prompt_style", "shots"),
            "a run baseline is served as its own recipe serves it",
        ),
    }

    def kind_field(self) -> str | None:
        """The field that makes this baseline a kind of its own (`run`, `endpoint`, `engine`);
        None for a model prompted locally."""
        fields = [n for n in type(self).model_fields if n not in self.SHARED]
        return next((n for n in fields if getattr(self, n) is not None), None)


NgramRange = tuple[PositiveInt, PositiveInt]


class TfidfConfig(Section):
    enabled: bool = _field(
        True,
        help="Put a TF-IDF + logistic-regression classifier (scikit-learn), fitted in seconds on the same training rows, beside the specialist in every classification evaluation: the cheapest specialist there is, and the one a neural specialist has to beat.",
        synonyms=("enable", "on"),
    )
    name: str = _field("tf-idf + logreg", help="Its label in the report.")
    word_ngrams: NgramRange | None = _field(
        (1, 2),
        help="Word n-gram range `[min, max]` (null: no word features).",
        synonyms=("ngram_range", "ngrams", "words"),
    )
    char_ngrams: NgramRange | None = _field(
        None,
        help="Character n-gram range `[min, max]` within word boundaries, e.g. `[2, 5]`, which helps with misspellings and short texts (null: none).",
        synonyms=("chars", "char_ngram_range"),
    )
    min_df: PositiveInt = _field(
        1,
        help="Ignore n-grams found in fewer training rows than this.",
        synonyms=("min_count",),
    )
    max_features: PositiveInt | None = _field(
        None, help="Keep only the most frequent n-grams of each kind (null: all)."
    )
    sublinear_tf: bool = _field(
        True, help="Count term frequency as 1 + log(tf), so a repeated word does not dominate."
    )
    c: Annotated[float, Field(gt=0)] = _field(
        10.0,
        help="Inverse regularization strength of the logistic regression (scikit-learn's `C`): larger fits the training rows more closely. 10 did as well as 1 or better on the validation splits of the built-in classification domains (sentiment 0.659 against 0.645, spam 0.986 against 0.948, topics 0.982 both).",
        synonyms=("C", "regularization", "inverse_regularization"),
    )
    class_weight: Literal["none", "balanced"] = _field(
        "none",
        help="`balanced` weights each label by the inverse of its frequency, for rare labels that matter.",
    )


class PriceConfig(Section):
    machine_per_hour: Annotated[float, Field(ge=0)] = _field(
        0.10,
        help="Hourly price (USD) of the machine that serves the local models.",
        synonyms=("hourly", "per_hour"),
    )
    per_million_input_tokens: dict[str, Annotated[float, Field(ge=0)]] = _field(
        {}, help="API price per million input tokens, by system name, for priced (hosted) models."
    )
    per_million_output_tokens: dict[str, Annotated[float, Field(ge=0)]] = _field(
        {}, help="API price per million output tokens, by system name."
    )
    per_human_label: Annotated[float, Field(ge=0)] = _field(
        0.0,
        help="What one human label costs (USD): an experiment weighs each specialist's training labels at this price, and a teacher's at what its labelling cost.",
        synonyms=("human_label", "per_label"),
    )
    requests: PositiveInt | None = _field(
        None,
        help="How many requests the deployed system will serve: with it, an experiment weighs one-off labelling against serving cost over this many requests (cost per 1k x requests / 1000). Null: serving cost per 1k requests alone.",
        synonyms=("volume", "request_volume"),
    )

    def token_prices(self, name: str) -> tuple[float, float] | None:
        """(input, output) USD per million tokens of the system `name`, where the price table
        names it (a hosted model); None: it is priced by the machine's time."""
        if name in self.per_million_input_tokens or name in self.per_million_output_tokens:
            return (
                self.per_million_input_tokens.get(name, 0.0),
                self.per_million_output_tokens.get(name, 0.0),
            )
        return None


class TimingConfig(Section):
    rounds: PositiveInt = _field(
        7,
        help="Timing rounds. Each round times every system on the same items, in a new order (as listed, reversed, then shuffled by `seed`), so that load on the machine falls on all systems alike. Figures are medians over rounds; the specialist's ratio to each baseline gets a sign-test interval over rounds, which needs at least 6 rounds at `eval.confidence` 0.95 (8 at 0.99). Rounds in which the machine was busy are left out of the ratios: 7 leave room for one.",
        synonyms=("repeats", "repetitions", "timing_rounds"),
    )
    throughput_items: PositiveInt = _field(
        64,
        help="Test items scored at `eval.batch_size` in each round to measure throughput (and from it machine-time cost).",
        synonyms=("items",),
    )
    max_minutes: Annotated[float, Field(gt=0)] = _field(
        10.0,
        help="Time allowed for the timing rounds. A round that would end after it is not started, and the report says how many ran.",
        synonyms=("budget_minutes", "minutes"),
    )


class ConstraintsConfig(Section):
    """What a system must meet to be recommended for deployment; each limit null allows any.
    An experiment's `constraints` (no limits by default); `EvalConstraintsConfig` for one run."""

    max_p50_ms: Annotated[float, Field(gt=0)] | None = _field(
        None,
        help="Largest p50 latency per item, in milliseconds, a deployable system may have (null: any).",
        synonyms=("latency_ms", "max_latency_ms", "p50_ms"),
    )
    max_usd_per_1k: Annotated[float, Field(ge=0)] | None = _field(
        None,
        help="Largest cost per 1,000 requests, in USD, at the recipe's prices (null: any).",
        synonyms=("cost_per_1k", "max_cost", "usd_per_1k"),
    )
    max_memory_gb: Annotated[float, Field(gt=0)] | None = _field(
        None,
        help="Largest peak memory in GB (10^9 bytes) a deployable system may need; a remote system's memory is not this machine's and always passes (null: any).",
        synonyms=("memory_gb", "max_memory"),
    )


class EvalConstraintsConfig(ConstraintsConfig):
    """The same limits for one run's bottom line, with defaults for a service on a CPU."""

    max_p50_ms: Annotated[float, Field(gt=0)] | None = _field(
        1000.0,
        help="Largest p50 latency at batch size 1, in milliseconds, a system the bottom line recommends may have (null: any). 1,000 ms: a request served one at a time on the evaluating machine answers within about a second, the most an interactive caller waits without a progress indicator.",
        synonyms=("latency_ms", "max_latency_ms", "p50_ms"),
    )
    max_memory_gb: Annotated[float, Field(gt=0)] | None = _field(
        8.0,
        help="Largest peak memory in GB (10^9 bytes) a system the bottom line recommends may need (null: any). 8 GB: half of a common 16 GB CPU instance, leaving the rest to the operating system and the service around the model; a remote system's memory is not this machine's and always passes.",
        synonyms=("memory_gb", "max_memory"),
    )


class CascadeConfig(Section):
    """A cascade: the first system answers, and the items it is unsure of go to the fallback."""

    name: str = _field(
        help="Its label in the report, e.g. `specialist → qwen`.", synonyms=("label",)
    )
    first: str = _field(
        "specialist",
        help="The system that answers first: `specialist`, or the name of any system that gives label scores (a local model, an engine, an endpoint scored by log-probabilities, the TF-IDF classifier).",
        synonyms=("primary", "small", "student"),
    )
    fallback: str = _field(
        help="The system the unsure items go to: a baseline's name from `eval.baselines` (an engine, an endpoint, a local model).",
        synonyms=("large", "escalate_to", "second", "general"),
    )
    confidence: Literal["probability", "margin"] = _field(
        "probability",
        help="How sure the first system is of an item: `probability`, its top label's probability normalized over the labels; `margin`, that probability minus the runner-up label's.",
        synonyms=("signal", "score"),
    )
    pick: Literal["non_inferior", "max_escalated", "fixed"] = _field(
        "non_inferior",
        help="How the threshold is chosen, always on the validation items (never on test items): `non_inferior`, the cheapest threshold (fewest items escalated) whose primary metric on validation is at least the fallback's minus `margin`; `max_escalated`, escalate the least confident `max_escalated` share of validation items; `fixed`, escalate items whose confidence is below `threshold`.",
        synonyms=("rule", "threshold_rule", "choose"),
    )
    threshold: Fraction | None = _field(
        None,
        help="`pick: fixed`: items whose confidence is below it go to the fallback.",
        synonyms=("cutoff", "min_confidence"),
    )
    max_escalated: Fraction | None = _field(
        None,
        help="`pick: max_escalated`: the largest share of validation items sent to the fallback (fewer when confidences tie at the cut).",
        synonyms=("max_share", "budget", "escalation_rate"),
    )
    margin: Fraction = _field(
        0.0,
        help="`pick: non_inferior`: how far below the fallback's the cascade's primary metric on validation may be. The test items' paired test then shows whether it holds there.",
        synonyms=("non_inferiority_margin", "delta"),
    )
    calibrate: bool = _field(
        True,
        help="Fit a temperature to the first system's label scores on validation (temperature scaling) before reading its confidence, so that a probability means what it says; `false` reads the scores as they are.",
        synonyms=("temperature", "temperature_scaling", "calibration"),
    )


JUDGE_PROMPT = (
    "Please act as an impartial judge. Compare the two assistants' answers to the question "
    "below, using the reference answer as the correct one: the better answer agrees with the "
    "reference and answers the question; length and order do not matter.\n\n"
    "[Question]\n{question}\n\n[Reference answer]\n{reference}\n\n"
    "[Assistant A's answer]\n{answer_a}\n\n[Assistant B's answer]\n{answer_b}\n\n"
    "Reply with your verdict first, exactly one of [[A]] (A is better), [[B]] (B is better) "
    "or [[C]] (a tie), then one sentence saying why."
)


JUDGE_PROMPT_WITHOUT_REFERENCE = (
    "Please act as an impartial judge. Compare the two assistants' answers to the question "
    "below: the better answer is correct and answers the question; length and order do not "
    "matter.\n\n"
    "[Question]\n{question}\n\n"
    "[Assistant A's answer]\n{answer_a}\n\n[Assistant B's answer]\n{answer_b}\n\n"
    "Reply with your verdict first, exactly one of [[A]] (A is better), [[B]] (B is better) "
    "or [[C]] (a tie), then one sentence saying why."
)


class JudgeConfig(Section):
    """A model that compares two systems' answers to each test item (QA)."""

    system: BaselineConfig = _field(
        help="The judge, written as an `eval.baselines` entry is: an engine (`engine:`), an endpoint (`endpoint:`, with its cache, retries, concurrency and `max_usd` spend cap; token prices in `eval.prices` under this name) or a local model (`model:`). It is not evaluated as a system; give it no `shots` and no `run`.",
        synonyms=("model", "judge", "baseline"),
    )
    against: list[str] = _field(
        [],
        help="The baselines, by name, the specialist is judged against, a pair each (empty: every baseline in `eval.baselines`).",
        synonyms=("pairs", "baselines", "opponents"),
    )
    reference: Literal["auto", "never"] = _field(
        "auto",
        help="`auto`: the judge reads each item's reference answer (`prompt`), as MT-Bench's reference-guided judge does, for items that have one; `never`: it reads the question and the two answers only (`prompt_without_reference`).",
        synonyms=("reference_guided", "references"),
    )
    prompt: str = _field(
        JUDGE_PROMPT,
        help="The judge's prompt when it reads the reference answer. Placeholders: `{question}`, `{reference}`, `{answer_a}`, `{answer_b}`. The reply must hold exactly one verdict, `[[A]]`, `[[B]]` or `[[C]]` (a tie); any other reply is counted unparsable, never guessed.",
        synonyms=("template", "prompt_template"),
    )
    prompt_without_reference: str = _field(
        JUDGE_PROMPT_WITHOUT_REFERENCE,
        help="The judge's prompt without a reference answer (`reference: never`, and the sanity check, where one answer is the reference). Placeholders: `{question}`, `{answer_a}`, `{answer_b}`.",
        synonyms=("template_without_reference",),
    )
    max_new_tokens: PositiveInt = _field(
        16,
        help="The longest reply the judge may write. The default prompts ask for the verdict first, and a verdict is written before any reason that follows it, so 16 tokens hold it and what comes after changes nothing (on Qwen2.5-1.5B, 48 tokens took 6.2 s a prompt on 2 cores); raise it for a prompt that asks for reasons first.",
        synonyms=("max_tokens",),
    )
    max_length: PositiveInt = _field(
        2048,
        help="A local judge's token limit for prompt and reply (`model:` judges; an engine's is its `engine.context`). A longer prompt has its question cut from the start, and is counted as truncated.",
        synonyms=("context",),
    )
    sanity: list[Literal["other_reference", "first_sentence"]] = _field(
        ["other_reference", "first_sentence"],
        help="The judge's sanity check, before its verdicts are trusted: on the test items it compares the reference answer with a corrupted one, in both orders and without the reference in the prompt. `other_reference`: another item's reference answer; `first_sentence`: the reference cut to its first sentence (items whose reference is one sentence are skipped). Empty: no check.",
        synonyms=("sanity_check", "corruptions"),
    )
    min_sanity: Fraction = _field(
        0.9,
        help="The share of sanity pairs in which the judge must prefer the reference in both orders; below it the report warns that the judge's verdicts are not to be trusted.",
        synonyms=("sanity_threshold", "threshold"),
    )
    length_controlled: bool = _field(
        False,
        help="Also give a length-controlled win rate: a logistic regression of each item's outcome on the answers' length difference (tanh of the word difference over its standard deviation), read at equal length, after AlpacaEval's length-controlled win rate without its per-instruction term.",
        synonyms=("length_control", "lc"),
    )


class EvalConfig(Section):
    metrics: list[str] = _field(
        [],
        help="Metric names (empty: the task's defaults). Classification: accuracy, macro_f1. Extraction: micro_f1, macro_f1. QA: exact_match, token_f1, rouge_l.",
        synonyms=("metric",),
    )
    baselines: list[BaselineConfig] = _field(
        [BaselineConfig(name="base zero-shot", model="base", shots=0)],
        help="General systems the specialist is compared with, all on the same test items.",
        synonyms=("baseline", "compare", "systems"),
    )
    tfidf: TfidfConfig = _field(
        TfidfConfig(),
        help="The statistical baseline of classification tasks: TF-IDF features and logistic regression.",
        synonyms=("statistical", "statistical_baseline", "tf_idf"),
    )
    batch_size: PositiveInt = _field(
        16, help="Items per forward pass when measuring throughput.", synonyms=("eval_batch_size",)
    )
    length_normalize: bool = _field(
        False,
        help="Classification: score labels by mean instead of summed token log-likelihood.",
        synonyms=("normalize",),
    )
    max_new_tokens: PositiveInt = _field(
        64, help="QA and extraction: generation length limit.", synonyms=("max_tokens",)
    )
    latency_items: PositiveInt = _field(
        16,
        help="Items timed one by one (batch size 1) in each timing round for the latency percentiles.",
    )
    specialist_form: Literal["auto", "merged", "adapter"] = _field(
        "auto",
        help="How the specialist is served: `merged` folds the adapter into float32 weights and rounds them once to `model.dtype` (what `finetune export --merge` writes; the base model's speed); `adapter` keeps it unmerged, in float32; `auto` merges unless the weights are quantized.",
        synonyms=("serving", "merge"),
    )
    memory: Literal["alone", "shared"] = _field(
        "alone",
        help="How each system's peak memory is measured on a CPU. `alone`: in a fresh process that loads the system and scores its longest batch (a few seconds per system), so no system is charged for what an earlier one left behind; `shared`: the evaluating process's peak while the system was scored, which carries earlier systems' leftovers (quick, for tests). On CUDA the allocator's per-system peak is always read in-process.",
        synonyms=("memory_measurement", "peak_memory"),
    )
    timing: TimingConfig = _field(
        TimingConfig(),
        help="How latency and throughput are measured: rounds with the order of systems changed between them.",
        synonyms=("timings", "speed"),
    )
    reuse: bool = _field(
        True,
        help="Take a system's predictions, peak memory and timing rounds from an earlier evaluation of exactly the same system (same model, weights, prompts, test items, answer settings and software) instead of evaluating it again; memory and timing only from this machine with the same timing settings. Kept in `<tracking.runs_dir>/systems/`. A system timed in another evaluation is compared with the others over their rounds, not round by round. `false` evaluates and times everything afresh.",
        synonyms=("cache", "reuse_evaluations"),
    )
    bootstrap_samples: PositiveInt = _field(
        2000,
        help="Bootstrap resamples for confidence intervals.",
        synonyms=("n_bootstrap", "bootstrap"),
    )
    confidence: Annotated[float, Field(gt=0.5, lt=1.0)] = _field(
        0.95, help="Confidence level of the intervals.", synonyms=("ci", "confidence_level")
    )
    prices: PriceConfig = _field(
        PriceConfig(),
        help="Price table for the cost-per-1,000-requests estimate.",
        synonyms=("price", "cost"),
    )
    cascades: list[CascadeConfig] = _field(
        [],
        help="Classification: systems made of two evaluated ones, the first answering and its least confident items going to the fallback. Both also score the validation items, where each cascade's threshold is chosen; its test figures come from the stored answers with no new inference: quality with intervals and paired tests, cost (the first's plus the escalated share of the fallback's) and latency (the per-item mixture). It joins the headline, the Pareto fronts and the verdict.",
        synonyms=("cascade", "routing", "escalation"),
    )
    judge: JudgeConfig | None = _field(
        None,
        help="QA: a judge model that compares the specialist's answer with each baseline's on every test item, in both orders (a disagreement is a tie), after a sanity check on corrupted reference answers. The report gives win rates with intervals, a sign test, position consistency and length bias, and its verdict rests on the judge's win rate (null: no judge).",
        synonyms=("llm_judge", "judging", "grader"),
    )
    constraints: EvalConstraintsConfig = _field(
        EvalConstraintsConfig(),
        help="What a system must meet for the report's bottom line to recommend it: systems over a limit are ruled out, and the report names the limit. No cost limit by default: between systems of no significantly different quality the clearly cheaper is recommended anyway, and what a service can pay is its owner's call.",
        synonyms=("limits", "requirements", "deployment"),
    )


class WandbConfig(Section):
    mode: Literal["online", "offline", "disabled"] = _field(
        "offline",
        help="`online` syncs when WANDB_API_KEY is set (falls back to offline when it is not); `offline` writes local run files; `disabled` logs nothing.",
    )
    project: str = _field("finetune", help="W&B project name.")
    entity: str | None = _field(
        None, help="W&B team or user (null: the key's default).", synonyms=("team",)
    )
    tags: list[str] = _field([], help="Tags added to the W&B run.")
    group: str | None = _field(
        None,
        help="W&B group the run's train, eval and report runs join (null: none). An experiment sets it to its name for every cell.",
        synonyms=("run_group",),
    )


class TrackingConfig(Section):
    runs_dir: str = _field(
        "runs",
        help="Where run directories are written (`<runs_dir>/<recipe name>/<run id>/`).",
        synonyms=("output_dir", "out_dir"),
    )
    wandb: WandbConfig = _field(
        WandbConfig(), help="Weights & Biases settings.", synonyms=("wb", "weights_and_biases")
    )


class Recipe(Section):
    """A whole recipe. `base:` (extension) is resolved before validation and is not a field."""

    name: str = _field(
        help="Recipe name; used for the run directory. Letters, digits, `-`, `_` and `.`.",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        synonyms=("recipe", "title"),
    )
    description: str = _field(
        "", help="One line saying what this recipe is for.", synonyms=("desc", "about")
    )
    seed: Annotated[int, Field(ge=0)] = _field(
        42,
        help="Seed for splits, shot selection, initialisation and data order.",
        synonyms=("random_seed",),
    )
    task: TaskConfig = _field(help="What is learned and evaluated.")
    data: DataConfig = _field(
        help="Where the examples come from and how they are split.", synonyms=("dataset",)
    )
    model: ModelConfig = _field(help="The base model and how it is loaded.")
    lora: LoRAConfig = _field(
        LoRAConfig(),
        help="Adapter settings (used when `train.method` is `lora`).",
        synonyms=("peft", "adapter"),
    )
    train: TrainConfig = _field(
        TrainConfig(), help="Optimisation and training budget.", synonyms=("training",)
    )
    eval: EvalConfig = _field(
        EvalConfig(), help="Metrics, baselines and the report.", synonyms=("evaluation", "evaluate")
    )
    tracking: TrackingConfig = _field(
        TrackingConfig(), help="Where runs and logs go.", synonyms=("logging", "wandb")
    )


def section_type(annotation: Any) -> type[BaseModel] | None:
    """The Section class inside an annotation (`X`, `list[X]`, `X | None`), or None for plain values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = section_type(arg)
        if found is not None:
            return found
    return None
