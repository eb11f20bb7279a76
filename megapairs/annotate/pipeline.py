"""Two-stage instruction generation for mined pairs (MegaPairs §3.1, paper Fig. 3 and 4).

For each (query, target) pair:

1. **MLLM.** The two images (labelled "Source Image" and "Target Image") and an instruction
   with a word limit drawn per pair from 60-100 go to a multimodal model, which describes
   what the images share and how they differ ("Both images ... However, the Source Image
   ..., whereas the Target Image ...").
2. **LLM.** The description and 5 demonstrations drawn per call from the prompt version's
   pool go to a text model, which writes at least 3 retrieval instructions that mention the
   source only vaguely and spell out what is particular to the target.

An unusable answer (a description cut off or too short, an instruction list that does not
parse or has fewer than the minimum valid items) is asked again, up to ``output_attempts``
times per stage, with new demonstrations each time; failed HTTP requests are retried inside
the backend (see :class:`~megapairs.annotate.backends.OpenAIBackend`).

**Concurrency.** A thread pool of ``concurrency`` workers, each taking one pair through
both stages. Threads rather than asyncio because the work is waiting on the network (the
GIL is free meanwhile), because ``httpx.Client`` is thread-safe and shares one connection
pool, because a thread pool works the same in scripts and in notebooks (which already run
an event loop), and because the local transformers backend and Pillow are blocking calls
anyway. Pairs are handed to the pool a few at a time (at most ``2 * concurrency`` in
flight), so memory does not grow with the number of pairs, and only the calling thread
writes the journal.

**Journal and resume.** Each outcome is appended to the journal as it arrives (see
:mod:`~megapairs.annotate.journal`). A later call with the same journal skips pairs already
done and, unless ``retry_failed``, those that failed. All random choices are functions of
``(seed, q_img, t_img)``, so a resumed run asks exactly what an uninterrupted one would
have asked. Failures are never dropped: each is journaled with its stage and reason,
returned in :attr:`AnnotationResult.failures` and counted in the stats.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field

import pyarrow as pa

from .. import dataset
from .._version import __version__
from . import prompts as _prompts
from .backends import BackendError, OpenAIBackend
from .journal import Journal, JournalState, read_journal
from .parsing import OutputError, check_description, parse_instructions, validate_instructions

__all__ = ["AnnotationResult", "annotate", "records_from_journal"]

logger = logging.getLogger("megapairs")

ENV_MLLM_MODEL = "MEGAPAIRS_MLLM_MODEL"
ENV_LLM_MODEL = "MEGAPAIRS_LLM_MODEL"
# Above this many pairs, progress=None shows a tqdm bar.
PROGRESS_MIN_PAIRS = 20


@dataclass
class AnnotationResult:
    """What :func:`annotate` returns.

    Attributes
    ----------
    records : list of dict
        MegaPairs records ``{"q_img", "q_text", "t_img", "hns"}`` of every pair done (in
        this run or an earlier one with the same journal), in input order.
    failures : list of dict
        ``{"q_img", "t_img", "stage", "reason", "status"}`` of every pair that failed and
        was not (or not successfully) retried, in input order.
    stats : dict
        ``pairs``, ``done``, ``failed`` (over all input pairs); ``resumed_done`` and
        ``resumed_failed`` (outcomes taken from the journal); ``asked``, ``new_done``,
        ``new_failed`` (this run); ``failed_by_stage``; ``output_retries`` (answers asked
        again because they were unusable); ``seconds``, ``pairs_per_second``; and
        ``backend`` / ``llm_backend`` request counts when the backend reports them.
    metadata : dict
        Prompt version and digest, models, seed and the other settings, and the package
        version: store it with the records (``dataset.write_records(..., metadata=)``).
    """

    records: list[dict]
    failures: list[dict]
    stats: dict = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)


class _MemoryJournal:
    """The journal interface without a file (``journal=None``: nothing to resume from)."""

    def __init__(self):
        self.state = JournalState()

    def append(self, entry: dict) -> None:
        key = (entry["q_img"], entry["t_img"])
        (self.state.done if entry["event"] == "done" else self.state.failed)[key] = entry

    def close(self) -> None:
        pass


def _input_pairs(pairs, keys) -> list[dict]:
    """The pairs as normalised records, checked for duplicates and self-pairs."""
    from .. import mining

    if isinstance(pairs, mining.MiningResult):
        pairs = pairs.table
    if isinstance(pairs, pa.Table):
        if "query" in pairs.column_names:
            if keys is None:
                raise ValueError("pairs is a mined table of image indices: pass keys= (the image paths)")
            pairs = mining.to_records(pairs, keys)
        else:
            pairs = dataset.records_from_table(pairs, "pairs")
    elif isinstance(pairs, (str, bytes, Mapping)) or not isinstance(pairs, Iterable):
        raise TypeError(f"pairs must be records, a pyarrow Table or a MiningResult, got {type(pairs).__name__}")
    out, seen = [], {}
    for i, p in enumerate(pairs):
        r = dataset.normalize_record(p, f"pairs[{i}]")
        key = (r["q_img"], r["t_img"])
        if r["q_img"] == r["t_img"]:
            raise ValueError(f"pairs[{i}]: query and target are the same image {r['q_img']!r}")
        if key in seen:
            raise ValueError(f"pairs[{i}] repeats pairs[{seen[key]}] ({key[0]!r}, {key[1]!r})")
        seen[key] = i
        out.append(r)
    return out


def _check_budget(word_budget) -> tuple[int, int]:
    try:
        lo, hi = (int(x) for x in word_budget)
    except (TypeError, ValueError):
        raise ValueError(f"word_budget must be a pair of ints (lo, hi), got {word_budget!r}") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"word_budget needs 1 <= lo <= hi, got {word_budget!r}")
    return lo, hi


def _positive(value, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


class _Worker:
    """Takes one pair through both stages; returns ``(event, entry)``, raises only a fatal
    BackendError (or a bug)."""

    def __init__(self, *, load, backend, llm_backend, prompts, settings, output_attempts, stop):
        self.load = load
        self.backend = backend
        self.llm_backend = llm_backend
        self.prompts = prompts
        self.s = settings
        self.output_attempts = output_attempts
        self.stop = stop
        self._lock = threading.Lock()
        self.output_retries = 0

    def _failed(self, pair, stage, reason, status=None):
        return "failed", {"event": "failed", "q_img": pair["q_img"], "t_img": pair["t_img"], "stage": stage,
                          "reason": reason, "status": status}

    def _chat(self, backend, messages, model, seed):
        return backend.chat(messages, model=model, max_tokens=self.s["max_tokens"],
                            temperature=self.s["temperature"], seed=seed, stop=self.stop)

    def _ask(self, pair, stage, what, ask):
        """Calls ``ask(call)`` until its answer parses, at most ``output_attempts`` times.
        Returns ``(None, result, extra, calls)``, or ``(outcome, None, None, calls)`` when the
        pair failed or the run was stopped."""
        last = ""
        for call in range(self.output_attempts):
            try:
                result, extra = ask(call)
                return None, result, extra, call + 1
            except BackendError as e:
                if e.fatal:  # stop the queued pairs before they reach the server
                    self.stop.set()
                    raise
                if self.stop.is_set():
                    return ("interrupted", None), None, None, call + 1
                return self._failed(pair, stage, e.reason, e.status), None, None, call + 1
            except OutputError as e:
                last = str(e)
                if call + 1 < self.output_attempts:
                    with self._lock:
                        self.output_retries += 1
        return (self._failed(pair, stage, f"unusable {what} after {self.output_attempts} answers: {last}"), None,
                None, self.output_attempts)

    def __call__(self, pair: dict):
        s, q, t = self.s, pair["q_img"], pair["t_img"]
        if self.stop.is_set():
            return "interrupted", None
        plan = _prompts.plan_pair(self.prompts, s["seed"], q, t, tuple(s["word_budget"]), s["num_demonstrations"])
        try:
            source, target = self.load(q), self.load(t)
            messages = _prompts.mllm_messages(self.prompts, source, target, plan.word_budget, s["max_image_side"])
        except Exception as e:  # noqa: BLE001 (any image failure - missing, undecodable, a bomb - is this pair's)
            return self._failed(pair, "image", f"{type(e).__name__}: {e}")

        def describe(call):
            answer = self._chat(self.backend, messages, s["mllm_model"],
                                _prompts.request_seed(s["seed"], q, t, f"mllm/{call}"))
            return check_description(answer.text, answer.finish_reason), None

        def instruct(call):
            demos = _prompts.demonstrations_for_call(self.prompts, s["seed"], q, t, call, s["num_demonstrations"])
            answer = self._chat(self.llm_backend, _prompts.llm_messages(self.prompts, description, demos),
                                s["llm_model"], _prompts.request_seed(s["seed"], q, t, f"llm/{call}"))
            kept, _ = validate_instructions(parse_instructions(answer.text), min_count=s["min_instructions"],
                                            max_count=s["max_instructions"])
            return kept, demos

        outcome, description, _, mllm_calls = self._ask(pair, "mllm", "description", describe)
        if outcome is not None:
            return outcome
        outcome, instructions, demos, calls = self._ask(pair, "llm", "instructions", instruct)
        if outcome is not None:
            return outcome
        return "done", {"event": "done", "q_img": q, "t_img": t, "hns": pair["hns"], "q_text": instructions,
                        "description": description, "word_budget": plan.word_budget,
                        "demonstrations": [d.id for d in demos], "mllm_calls": mllm_calls, "llm_calls": calls}


def outcomes(pairs: Sequence[dict], state: JournalState) -> tuple[list[dict], list[dict]]:
    """The records of the pairs a journal holds as done and the failures of those it holds
    as failed, in the order of ``pairs``."""
    records, failures = [], []
    for p in pairs:
        key = (p["q_img"], p["t_img"])
        if key in state.done:
            records.append({"q_img": p["q_img"], "q_text": list(state.done[key]["q_text"]), "t_img": p["t_img"],
                            "hns": p["hns"]})
        elif key in state.failed:
            e = state.failed[key]
            failures.append({"q_img": p["q_img"], "t_img": p["t_img"], "stage": e["stage"], "reason": e["reason"],
                             "status": e.get("status")})
    return records, failures


def annotate(
    pairs,
    images,
    *,
    backend=None,
    llm_backend=None,
    mllm_model: str | None = None,
    llm_model: str | None = None,
    journal: str | os.PathLike | None = None,
    retry_failed: bool = False,
    concurrency: int = 8,
    seed: int = 0,
    prompt_version: str = _prompts.DEFAULT_PROMPT_VERSION,
    word_budget: tuple[int, int] = _prompts.WORD_BUDGET,
    num_demonstrations: int = _prompts.NUM_DEMONSTRATIONS,
    min_instructions: int = 3,
    max_instructions: int | None = None,
    output_attempts: int = 2,
    temperature: float = 0.7,
    max_tokens: int = 512,
    max_image_side: int | None = None,
    keys: Sequence[str] | None = None,
    progress: bool | None = None,
    on_record: Callable[[dict], None] | None = None,
    fsync: bool = False,
) -> AnnotationResult:
    """Write instructions for mined image pairs with an MLLM and an LLM (module docstring).

    Parameters
    ----------
    pairs : records, pyarrow.Table or MiningResult
        Records with ``q_img``, ``t_img`` and optionally ``hns`` (e.g. from
        :func:`megapairs.mining.to_records` or :func:`megapairs.dataset.read_records`), a
        table with those columns, or :func:`megapairs.mining.mine_pairs`' table together
        with ``keys``. Each (q_img, t_img) must appear once.
    images : folder, mapping or callable
        Where image bytes come from: a folder the keys are relative to, a mapping such as
        :class:`megapairs.dataset.ShardReader`, or ``key -> bytes``.
    backend : chat backend, optional
        Default: an :class:`OpenAIBackend` configured from the environment (closed at the end).
    llm_backend : chat backend, optional
        For the text stage; default ``backend``.
    mllm_model, llm_model : str, optional
        Model names sent to the backend (for :class:`TransformersBackend`, paths or hub
        ids); default from ``MEGAPAIRS_MLLM_MODEL`` / ``MEGAPAIRS_LLM_MODEL``. The paper used
        InternVL2-26B and Llama-3-8B.
    journal : path, optional
        JSONL journal to append outcomes to and resume from; None keeps nothing.
    retry_failed : bool
        Ask again the pairs the journal records as failed.
    concurrency : int
        Pairs in progress at once (worker threads).
    seed : int
        Seeds every per-pair choice (word budget, demonstrations, request seeds).
    prompt_version : str
        Folder of ``megapairs/annotate/prompts``.
    word_budget : (lo, hi)
        Range of the per-pair word limit, inclusive.
    num_demonstrations : int
        Demonstrations per LLM call, drawn from the pool.
    min_instructions, max_instructions : int
        Fewer valid instructions than the minimum make the answer unusable; at most the
        maximum are kept (None: all).
    output_attempts : int
        Answers asked per stage when they are unusable.
    temperature, max_tokens : float, int
        Sampling settings of both stages.
    max_image_side : int, optional
        Shrink images whose longer side exceeds this before sending (re-encoded as JPEG).
    keys : sequence of str, optional
        Image keys when ``pairs`` is a mined table of indices.
    progress : bool, optional
        tqdm bar with rate and failure count; None shows it above 20 pairs.
    on_record : callable, optional
        Called with each journal entry right after it is written (from the calling thread);
        an exception it raises stops the run like Ctrl-C does.
    fsync : bool
        ``os.fsync`` the journal after each entry (survives power loss, not just a crash).

    Returns
    -------
    AnnotationResult

    Raises
    ------
    ValueError
        For bad arguments, a malformed pair (naming its index), a missing model name, or a
        journal written with other settings.
    BackendError
        When the server refuses every request (HTTP 401, 403, 404); outcomes so far are kept.
    KeyboardInterrupt
        Re-raised after the finished outcomes have been journaled; run again to resume.
    """
    concurrency = _positive(concurrency, "concurrency")
    output_attempts = _positive(output_attempts, "output_attempts")
    min_instructions = _positive(min_instructions, "min_instructions")
    if max_instructions is not None and _positive(max_instructions, "max_instructions") < min_instructions:
        raise ValueError(f"max_instructions={max_instructions} is below min_instructions={min_instructions}")
    if max_image_side is not None:
        _positive(max_image_side, "max_image_side")
    _positive(max_tokens, "max_tokens")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not isinstance(temperature, (int, float)):
        raise TypeError(f"temperature must be a number, got {temperature!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be non-negative, got {temperature!r}")
    budget = _check_budget(word_budget)
    prompt_set = _prompts.load_prompts(prompt_version)
    if not 1 <= _positive(num_demonstrations, "num_demonstrations") <= len(prompt_set.demonstrations):
        raise ValueError(f"num_demonstrations={num_demonstrations} but prompt version {prompt_version!r} has "
                         f"{len(prompt_set.demonstrations)} demonstrations")
    mllm_model = mllm_model or os.environ.get(ENV_MLLM_MODEL)
    llm_model = llm_model or os.environ.get(ENV_LLM_MODEL)
    if not mllm_model:
        raise ValueError(f"no multimodal model: pass mllm_model= or set {ENV_MLLM_MODEL}")
    if not llm_model:
        raise ValueError(f"no text model: pass llm_model= or set {ENV_LLM_MODEL}")
    load = dataset.image_loader(images)
    todo_pairs = _input_pairs(pairs, keys)

    settings = {"prompt_version": prompt_set.version, "prompt_digest": prompt_set.digest,
                "mllm_model": mllm_model, "llm_model": llm_model, "seed": seed, "word_budget": list(budget),
                "num_demonstrations": num_demonstrations, "min_instructions": min_instructions,
                "max_instructions": max_instructions, "temperature": float(temperature),
                "max_tokens": max_tokens, "max_image_side": max_image_side}
    metadata = {"annotate": settings, "megapairs_version": __version__}

    jr = _MemoryJournal() if journal is None else Journal(journal, settings, {"megapairs_version": __version__},
                                                          fsync=fsync)
    own_backend = backend is None
    t0 = time.monotonic()
    try:
        if own_backend:
            backend = OpenAIBackend(max_connections=max(concurrency, 8))
        llm_backend = backend if llm_backend is None else llm_backend
        state = jr.state
        resumed_done = sum((p["q_img"], p["t_img"]) in state.done for p in todo_pairs)
        resumed_failed = sum((p["q_img"], p["t_img"]) in state.failed for p in todo_pairs)
        todo = [p for p in todo_pairs if (p["q_img"], p["t_img"]) not in state.done
                and (retry_failed or (p["q_img"], p["t_img"]) not in state.failed)]
        if journal is not None and (resumed_done or resumed_failed):
            logger.info("annotate: journal %s has %d done and %d failed of these %d pairs; asking %d",
                        journal, resumed_done, resumed_failed, len(todo_pairs), len(todo))
        stop = threading.Event()
        worker = _Worker(load=load, backend=backend, llm_backend=llm_backend, prompts=prompt_set,
                         settings=settings, output_attempts=output_attempts, stop=stop)
        new = Counter()
        show = len(todo) > PROGRESS_MIN_PAIRS if progress is None else bool(progress)
        bar = None
        if show:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(todo), desc="annotating", unit="pair")
            bar.set_postfix(failed=0)

        def record(outcome, notify=True):
            event, entry = outcome
            if event == "interrupted":
                return
            jr.append(entry)
            new[event] += 1
            if bar is not None:
                bar.update(1)
                if event == "failed":
                    bar.set_postfix(failed=new["failed"])
            if notify and on_record is not None:
                on_record(entry)

        executor = ThreadPoolExecutor(concurrency, thread_name_prefix="megapairs-annotate")
        pending: set[Future] = set()
        queue = iter(todo)
        try:
            while True:
                while len(pending) < 2 * concurrency:
                    pair = next(queue, None)
                    if pair is None:
                        break
                    pending.add(executor.submit(worker, pair))
                if not pending:
                    break
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in finished:
                    pending.discard(fut)
                    record(fut.result())
        except BaseException:
            stop.set()
            for fut in pending:
                fut.cancel()
            for fut in pending:  # keep what finished meanwhile; the rest is asked on resume
                if fut.done() and not fut.cancelled() and fut.exception() is None:
                    record(fut.result(), notify=False)
            raise
        finally:
            executor.shutdown(wait=False, cancel_futures=True)
            if bar is not None:
                bar.close()
    finally:
        jr.close()
        if own_backend and backend is not None:
            backend.close()

    seconds = time.monotonic() - t0
    records, failures = outcomes(todo_pairs, jr.state)
    stats = {
        "pairs": len(todo_pairs),
        "done": len(records),
        "failed": len(failures),
        "resumed_done": resumed_done,
        "resumed_failed": resumed_failed,
        "asked": new["done"] + new["failed"],
        "new_done": new["done"],
        "new_failed": new["failed"],
        "failed_by_stage": dict(Counter(f["stage"] for f in failures)),
        "output_retries": worker.output_retries,
        "seconds": seconds,
        "pairs_per_second": (new["done"] + new["failed"]) / seconds if seconds > 0 else 0.0,
    }
    for name, b in (("backend", backend), ("llm_backend", llm_backend)):
        if name == "llm_backend" and b is backend:
            continue
        if callable(getattr(b, "stats", None)):
            stats[name] = b.stats()
    logger.info("annotate: %d pairs, %d done, %d failed (%d asked this run, %.2f pairs/s)",
                stats["pairs"], stats["done"], stats["failed"], stats["asked"], stats["pairs_per_second"])
    if failures:
        logger.warning("annotate: %d pairs failed, by stage %s; see AnnotationResult.failures%s",
                       len(failures), stats["failed_by_stage"], f" or {journal}" if journal else "")
    return AnnotationResult(records, failures, stats, metadata)


def records_from_journal(path: str | os.PathLike) -> tuple[list[dict], list[dict], dict]:
    """The outcomes in a journal alone, e.g. of a run that was stopped.

    Returns
    -------
    records : list of dict
        MegaPairs records of the pairs done, in journal order.
    failures : list of dict
        ``{"q_img", "t_img", "stage", "reason", "status"}`` of the pairs whose last outcome is
        a failure.
    metadata : dict
        As :attr:`AnnotationResult.metadata`.
    """
    state = read_journal(path)
    if state.header is None:
        raise ValueError(f"{path}: empty journal")
    records = [{"q_img": e["q_img"], "q_text": list(e["q_text"]), "t_img": e["t_img"], "hns": list(e["hns"])}
               for e in state.done.values()]
    failures = [{"q_img": e["q_img"], "t_img": e["t_img"], "stage": e["stage"], "reason": e["reason"],
                 "status": e.get("status")} for e in state.failed.values()]
    metadata = {"annotate": state.header["settings"], "megapairs_version": state.header.get("megapairs_version")}
    return records, failures, metadata
