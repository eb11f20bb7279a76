"""Instruction generation for mined image pairs: an MLLM describes each pair, an LLM turns
the description into retrieval instructions (MegaPairs §3.1).

>>> import megapairs as mp
>>> from megapairs import annotate
>>> backend = annotate.OpenAIBackend("http://localhost:8000/v1")               # doctest: +SKIP
>>> result = annotate.annotate(records, "images/", backend=backend,
...                            mllm_model="OpenGVLab/InternVL2-26B",
...                            llm_model="meta-llama/Meta-Llama-3-8B-Instruct",
...                            journal="annotate.journal.jsonl")                # doctest: +SKIP
>>> mp.dataset.write_records(result.records, "megapairs.parquet", metadata=result.metadata)  # doctest: +SKIP

Also a command line: ``python -m megapairs.annotate --help``. Environment variables are
listed in :mod:`megapairs.annotate.backends`; the journal format in
:mod:`megapairs.annotate.journal`; prompts in :mod:`megapairs.annotate.prompts`.
Neither torch nor transformers is imported unless :class:`TransformersBackend` runs a model.
"""

from . import backends, journal, parsing, prompts
from .backends import BackendError, Completion, OpenAIBackend, ServerPool, TransformersBackend
from .journal import Journal, JournalState, read_journal
from .parsing import OutputError, check_description, parse_instructions, validate_instructions
from .pipeline import AnnotationResult, annotate, records_from_journal
from .prompts import DEFAULT_PROMPT_VERSION, PromptSet, load_prompts

__all__ = [
    "DEFAULT_PROMPT_VERSION",
    "AnnotationResult",
    "BackendError",
    "Completion",
    "Journal",
    "JournalState",
    "OpenAIBackend",
    "ServerPool",
    "OutputError",
    "PromptSet",
    "TransformersBackend",
    "annotate",
    "backends",
    "check_description",
    "journal",
    "load_prompts",
    "parse_instructions",
    "parsing",
    "prompts",
    "read_journal",
    "records_from_journal",
    "validate_instructions",
]
