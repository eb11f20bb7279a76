"""``python -m megapairs.annotate``: annotate a file of pairs against a chat-completions server.

The API key is read from ``MEGAPAIRS_API_KEY`` or ``OPENAI_API_KEY`` only (never a command
argument, which other users could see in the process list).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from pathlib import Path

from .. import dataset
from .backends import OpenAIBackend
from .pipeline import annotate


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m megapairs.annotate",
        description="Write retrieval instructions for mined image pairs (MLLM description, then LLM "
                    "instructions). Interrupt at any time; the same command resumes from the journal.")
    p.add_argument("pairs", type=Path, help="records with q_img, t_img, hns (.jsonl, .jsonl.gz or .parquet)")
    p.add_argument("output", type=Path, help="annotated records (.jsonl, .jsonl.gz or .parquet)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", type=Path, help="folder the image keys are relative to")
    src.add_argument("--shards", type=Path, nargs="+", help="WebDataset .tar shards holding the images")
    p.add_argument("--journal", type=Path, help="journal file (default: OUTPUT + '.journal.jsonl')")
    p.add_argument("--failures", type=Path, help="also write the failed pairs here, as JSONL")
    p.add_argument("--api-base", help="server base URL, e.g. http://localhost:8000/v1 (default: MEGAPAIRS_API_BASE)")
    p.add_argument("--llm-api-base", help="another server for the text stage (default: MEGAPAIRS_LLM_API_BASE, "
                                          "else the same as --api-base)")
    p.add_argument("--mllm-model", help="multimodal model name (default: MEGAPAIRS_MLLM_MODEL)")
    p.add_argument("--llm-model", help="text model name (default: MEGAPAIRS_LLM_MODEL)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per request attempt")
    p.add_argument("--max-attempts", type=int, default=6, help="attempts per request")
    p.add_argument("--backoff-base", type=float, default=1.0, help="seconds; doubled per attempt, with jitter")
    p.add_argument("--retry-failed", action="store_true", help="ask again pairs the journal records as failed")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-version", default="v1")
    p.add_argument("--max-image-side", type=int, help="shrink larger images before sending")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    images = args.images if args.images is not None else dataset.ShardReader(args.shards)
    journal = args.journal or args.output.with_name(args.output.name + ".journal.jsonl")
    options = {"timeout": args.timeout, "max_attempts": args.max_attempts, "backoff_base": args.backoff_base,
               "max_connections": max(8, args.concurrency)}
    llm_base = args.llm_api_base or os.environ.get("MEGAPAIRS_LLM_API_BASE")
    with contextlib.ExitStack() as stack:
        backend = stack.enter_context(OpenAIBackend(args.api_base, **options))
        llm_backend = stack.enter_context(OpenAIBackend(llm_base, **options)) if llm_base else None
        result = annotate(dataset.read_records(args.pairs), images, backend=backend, llm_backend=llm_backend,
                          mllm_model=args.mllm_model, llm_model=args.llm_model, journal=journal,
                          retry_failed=args.retry_failed, concurrency=args.concurrency, seed=args.seed,
                          prompt_version=args.prompt_version, max_image_side=args.max_image_side,
                          progress=False if args.no_progress else None)
    dataset.write_records(result.records, args.output, metadata=result.metadata)
    if args.failures is not None:
        with open(args.failures, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(failure, ensure_ascii=False) + "\n" for failure in result.failures)
    print(json.dumps({k: v for k, v in result.stats.items()}, indent=1), file=sys.stderr)
    if result.failures:
        print(f"{len(result.failures)} pairs failed; their reasons are in {journal}"
              + (f" and {args.failures}" if args.failures else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
