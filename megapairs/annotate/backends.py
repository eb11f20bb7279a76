"""Chat backends: an OpenAI-compatible HTTP client and a local transformers runner.

A backend is any object with

    chat(messages, *, model, max_tokens, temperature, seed=None, stop=None) -> Completion

taking OpenAI chat-completions ``messages`` (images as ``image_url`` parts holding base64
data URLs) and raising :class:`BackendError` when the request fails for good. ``stop`` is a
``threading.Event``; when it is set the backend gives up at the next chance (before a retry,
during a back-off) with ``BackendError("interrupted")``.

Environment variables (arguments win over them):

- ``MEGAPAIRS_API_BASE``, else ``OPENAI_BASE_URL``, else ``OPENAI_API_BASE``: the server's
  base URL, e.g. ``http://localhost:8000/v1`` (vLLM's default, also used when none is set).
  A URL without a path gets ``/v1`` appended; requests go to ``<base>/chat/completions``.
- ``MEGAPAIRS_API_KEY``, else ``OPENAI_API_KEY``: sent as ``Authorization: Bearer <key>``;
  local servers usually need none.
- ``MEGAPAIRS_MLLM_MODEL`` and ``MEGAPAIRS_LLM_MODEL``: model names, read by
  :func:`megapairs.annotate.annotate` when its ``mllm_model`` / ``llm_model`` are not given.
- ``MEGAPAIRS_LLM_API_BASE``: read by ``python -m megapairs.annotate`` only, a second server
  for the text stage (vLLM serves one model per process).
"""

from __future__ import annotations

import base64
import email.utils
import io
import json
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from ..errors import BackendError
from ..limits import loads_json

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["BackendError", "Completion", "OpenAIBackend", "ServerPool", "TransformersBackend", "to_hf_messages"]

DEFAULT_API_BASE = "http://localhost:8000/v1"
ENV_API_BASE = ("MEGAPAIRS_API_BASE", "OPENAI_BASE_URL", "OPENAI_API_BASE")
ENV_API_KEY = ("MEGAPAIRS_API_KEY", "OPENAI_API_KEY")

#: Statuses worth asking again: rate limits, server overload, gateway trouble.
RETRY_STATUSES = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
#: Statuses after which no request can succeed (bad key, no such model or endpoint): the run stops.
FATAL_STATUSES = frozenset({401, 403, 404})
#: Larger chat-completion bodies are treated as malformed (a few KB are expected).
MAX_RESPONSE_BYTES = 16 * 2**20


@dataclass(frozen=True)
class Completion:
    """A model answer: its text and why generation stopped (``"stop"``, ``"length"``, ...)."""

    text: str
    finish_reason: str | None = None


def _env(names: Sequence[str]) -> str | None:
    for name in names:
        value = os.environ.get(name)
        if value:
            return value
    return None


def _retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _snippet(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[:n] + "..."


class OpenAIBackend:
    """Client for an OpenAI-compatible ``/chat/completions`` endpoint (vLLM, SGLang,
    llama.cpp server, Ollama, hosted APIs), with retries.

    One instance is shared by all worker threads: ``httpx.Client`` is thread-safe and pools
    connections (at most ``max_connections``).

    **Retries.** A timeout, a connection error, a response body that is not the expected
    JSON, or HTTP 408/409/425/429/5xx is retried up to ``max_attempts`` attempts in all. The
    wait before attempt ``n + 1`` is drawn uniformly from
    ``[0, min(backoff_max, backoff_base * 2**(n - 1))]`` ("full jitter", so that many
    workers hitting one overloaded server spread out), and is at least the server's
    ``Retry-After`` when it sends one (capped at ``retry_after_max``). Other 4xx statuses
    fail the request at once; 401, 403 and 404 are fatal (:attr:`BackendError.fatal`).

    Parameters
    ----------
    base_url : str, optional
        E.g. ``"http://localhost:8000/v1"``; default from the environment (module docstring).
    api_key : str, optional
        Default from ``MEGAPAIRS_API_KEY`` or ``OPENAI_API_KEY``; none is sent if unset.
    timeout : float
        Seconds for each attempt (connect, read, write and pool).
    max_attempts : int
        Attempts per request, the first included.
    backoff_base, backoff_max : float
        Seconds, see above.
    retry_after_max : float
        Longest ``Retry-After`` honoured, in seconds.
    max_connections : int
        Connection-pool size; at least the annotation concurrency.
    headers : dict, optional
        Extra HTTP headers.
    extra_body : dict, optional
        Extra fields for every request body (e.g. ``{"top_p": 0.9}``, vLLM's
        ``{"chat_template_kwargs": {...}}``).
    send_seed : bool
        Send each request's ``seed`` (servers that honour it sample reproducibly).
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *, timeout: float = 120.0,
                 max_attempts: int = 6, backoff_base: float = 1.0, backoff_max: float = 60.0,
                 retry_after_max: float = 600.0, max_connections: int = 64, headers: dict | None = None,
                 extra_body: dict | None = None, send_seed: bool = True):
        try:
            import httpx
        except ImportError:
            raise ImportError("OpenAIBackend needs httpx: pip install httpx") from None
        base = base_url or _env(ENV_API_BASE) or DEFAULT_API_BASE
        parts = urlsplit(base)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"base_url must be an http(s) URL such as 'http://localhost:8000/v1', got {base!r}")
        base = base.rstrip("/")
        if parts.path in ("", "/"):
            base += "/v1"
        for name, value in (("timeout", timeout), ("backoff_base", backoff_base), ("backoff_max", backoff_max),
                            ("retry_after_max", retry_after_max)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
                raise ValueError(f"{name} must be a non-negative number of seconds, got {value!r}")
        if not isinstance(max_attempts, int) or isinstance(max_attempts, bool) or max_attempts < 1:
            raise ValueError(f"max_attempts must be a positive int, got {max_attempts!r}")
        self.base_url = base
        self.url = base + "/chat/completions"
        self.timeout = float(timeout)
        self.max_attempts = max_attempts
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.retry_after_max = float(retry_after_max)
        self.extra_body = dict(extra_body or {})
        self.send_seed = send_seed
        key = api_key if api_key is not None else _env(ENV_API_KEY)
        all_headers = {"Content-Type": "application/json", **(headers or {})}
        if key:
            all_headers["Authorization"] = f"Bearer {key}"
        self._httpx = httpx
        self._client = httpx.Client(timeout=httpx.Timeout(self.timeout), headers=all_headers,
                                    limits=httpx.Limits(max_connections=max_connections,
                                                        max_keepalive_connections=max_connections))
        self._lock = threading.Lock()
        self._counts: Counter = Counter()
        self._random = random.Random()

    def __repr__(self) -> str:
        return f"OpenAIBackend({self.base_url!r})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def stats(self) -> dict:
        """Counts since creation: ``requests`` (HTTP attempts), ``retries``, ``failed``
        (requests given up), and ``status_<code>`` / ``timeouts`` / ``connection_errors`` /
        ``bad_responses`` per attempt outcome."""
        with self._lock:
            return dict(self._counts)

    def _count(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                self._counts[key] += 1

    def backoff(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based)."""
        with self._lock:
            delay = self._random.uniform(0.0, min(self.backoff_max, self.backoff_base * 2.0 ** (attempt - 1)))
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        return delay

    def _post(self, payload: bytes) -> tuple[int, Any, bytes]:
        """One request: (status, headers, body). ``timeout`` bounds the whole attempt, not
        only each read (a server trickling bytes cannot hold a worker), and the body is
        capped at MAX_RESPONSE_BYTES."""
        deadline = time.monotonic() + self.timeout
        with self._client.stream("POST", self.url, content=payload) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if time.monotonic() > deadline:
                    raise self._httpx.ReadTimeout(f"no complete answer within {self.timeout:g} s")
                if len(body) > MAX_RESPONSE_BYTES:
                    raise ValueError(f"response body larger than {MAX_RESPONSE_BYTES} bytes")
            return response.status_code, response.headers, bytes(body)

    def chat(self, messages: list[dict], *, model: str, max_tokens: int = 512, temperature: float = 0.7,
             seed: int | None = None, stop: threading.Event | None = None) -> Completion:
        """POST one chat completion, retrying as described in the class docstring.

        Raises
        ------
        BackendError
            When the request failed for good, with the reason and the last status.
        """
        body = {"model": model, "messages": messages, "max_tokens": int(max_tokens),
                "temperature": float(temperature), **self.extra_body}
        if seed is not None and self.send_seed:
            body["seed"] = int(seed)
        payload = json.dumps(body, ensure_ascii=False).encode("utf-8")
        httpx = self._httpx
        status = None
        for attempt in range(1, self.max_attempts + 1):
            if stop is not None and stop.is_set():
                raise BackendError("interrupted", status)
            self._count("requests")
            retry_after = None
            try:
                status, headers, content = self._post(payload)
            except httpx.TimeoutException as e:
                status, reason = None, f"timeout after {self.timeout:g} s ({type(e).__name__})"
                self._count("timeouts")
            except httpx.TransportError as e:
                status, reason = None, f"connection error: {type(e).__name__}: {e}"
                self._count("connection_errors")
            except ValueError as e:  # an oversized body
                status, reason = None, str(e)
                self._count("bad_responses")
            else:
                self._count(f"status_{status}")
                if status == 200:
                    try:
                        return _completion(content)
                    except ValueError as e:
                        reason = f"bad response body: {e}"
                        self._count("bad_responses")
                else:
                    reason = f"HTTP {status}: {_snippet(content.decode('utf-8', 'replace'))}"
                    if status in FATAL_STATUSES:
                        self._count("failed")
                        raise BackendError(f"{reason} (from {self.url}, model {model!r})", status, fatal=True)
                    if status not in RETRY_STATUSES and status < 500:
                        self._count("failed")
                        raise BackendError(reason, status)
                    retry_after = _retry_after(headers.get("retry-after"))
            if attempt == self.max_attempts:
                break
            self._count("retries")
            delay = self.backoff(attempt, retry_after)
            if stop is not None:
                if stop.wait(delay):
                    raise BackendError("interrupted", status)
            elif delay > 0:
                time.sleep(delay)
        self._count("failed")
        raise BackendError(f"{reason} (gave up after {self.max_attempts} attempts)", status)


class ServerPool:
    """Several OpenAI-compatible servers serving the same models, used as one backend: the
    way to spread annotation over many GPUs (one vLLM process per GPU or node).

    Each request goes to the server with the fewest requests in flight (ties: the first in
    the list), at most ``concurrency`` per server; a caller waits while every server is full.
    A request that fails for good on one server (its retries spent, or a connection that
    cannot be made) is tried once on each other server before :class:`BackendError` is
    raised; a fatal status (401, 403, 404) is raised at once. The annotation journal is
    written by the caller alone, so a killed run resumes exactly as with one server.

    Parameters
    ----------
    base_urls : sequence of str
        The servers, e.g. ``["http://gpu0:8000/v1", "http://gpu1:8000/v1"]``.
    concurrency : int
        Requests in flight per server. Give :func:`~megapairs.annotate.annotate` a
        concurrency of ``len(base_urls) * concurrency`` to keep them all busy.
    **kwargs
        Passed to each :class:`OpenAIBackend` (``api_key``, ``timeout``, ``max_attempts``, ...).
    """

    def __init__(self, base_urls: Sequence[str], *, concurrency: int = 8, **kwargs):
        urls = [base_urls] if isinstance(base_urls, str) else list(base_urls)
        if not urls:
            raise ValueError("ServerPool needs at least one base URL")
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
        kwargs.setdefault("max_connections", max(8, concurrency))
        self.backends = []
        try:
            for url in urls:
                self.backends.append(OpenAIBackend(url, **kwargs))
        except BaseException:
            self.close()
            raise
        self.concurrency = concurrency
        self._busy = [0] * len(self.backends)
        self._served = [0] * len(self.backends)
        self._free = threading.Condition()

    def __repr__(self) -> str:
        return f"ServerPool({[b.base_url for b in self.backends]!r}, concurrency={self.concurrency})"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close every server's connection pool."""
        for backend in self.backends:
            backend.close()

    def stats(self) -> dict:
        """The servers' counts summed (as :meth:`OpenAIBackend.stats`), and ``served``: the
        requests each server answered, in list order."""
        total: Counter = Counter()
        for backend in self.backends:
            total.update(backend.stats())
        with self._free:
            return {**total, "served": list(self._served)}

    def _take(self, skip: set[int]) -> int:
        with self._free:
            while True:
                open_ = [i for i in range(len(self.backends)) if i not in skip and self._busy[i] < self.concurrency]
                if open_:
                    i = min(open_, key=lambda j: self._busy[j])
                    self._busy[i] += 1
                    return i
                self._free.wait()

    def _give(self, i: int, served: bool) -> None:
        with self._free:
            self._busy[i] -= 1
            self._served[i] += served
            self._free.notify()

    def chat(self, messages: list[dict], **kwargs) -> Completion:
        """One chat completion on the least busy server (see the class docstring)."""
        tried: set[int] = set()
        while True:
            i = self._take(tried)
            try:
                result = self.backends[i].chat(messages, **kwargs)
            except BackendError as e:
                self._give(i, False)
                tried.add(i)
                stop = kwargs.get("stop")
                if e.fatal or len(tried) == len(self.backends) or (stop is not None and stop.is_set()):
                    raise
                continue
            self._give(i, True)
            return result


def _completion(content: bytes) -> Completion:
    """The first choice of a chat-completions response body; ValueError if malformed."""
    try:
        data = loads_json(content, "the response")
    except ValueError as e:
        raise ValueError(f"not JSON ({e}): {_snippet(content.decode('utf-8', 'replace'), 80)!r}") from None
    try:
        choice = data["choices"][0]
        message = choice["message"]
    except (KeyError, IndexError, TypeError):
        raise ValueError(f"no choices[0].message in {_snippet(json.dumps(data), 120)!r}") from None
    text = message.get("content") if isinstance(message, dict) else None
    if isinstance(text, list):  # some servers return content parts
        text = "".join(part.get("text", "") for part in text if isinstance(part, dict))
    if text is not None and not isinstance(text, str):
        raise ValueError(f"choices[0].message.content is a {type(text).__name__}, not text")
    return Completion(text or "", choice.get("finish_reason"))


# --------------------------------------------------------------------------- transformers


def to_hf_messages(messages: list[dict]) -> tuple[list[dict], list]:
    """OpenAI chat messages as transformers chat templates take them.

    Text-only turns keep a plain string ``content`` (what text-model templates expect).
    Turns with images become lists of ``{"type": "text", "text"}`` and ``{"type": "image",
    "image": PIL.Image}`` parts, the images decoded from their base64 data URLs.

    Returns
    -------
    messages : list of dict
    images : list of PIL.Image.Image
        The images in order of appearance.
    """
    out, images = [], []
    for i, message in enumerate(messages):
        content = message.get("content")
        if isinstance(content, str):
            out.append({"role": message["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise TypeError(f"messages[{i}].content must be a str or a list of parts, got {type(content).__name__}")
        parts = []
        for part in content:
            kind = part.get("type")
            if kind == "text":
                parts.append({"type": "text", "text": part["text"]})
            elif kind == "image_url":
                url = part["image_url"]["url"] if isinstance(part["image_url"], dict) else part["image_url"]
                image = _decode_data_url(url, f"messages[{i}]")
                images.append(image)
                parts.append({"type": "image", "image": image})
            else:
                raise ValueError(f"messages[{i}] has a content part of unknown type {kind!r}")
        if all(p["type"] == "text" for p in parts):
            out.append({"role": message["role"], "content": "\n".join(p["text"] for p in parts)})
        else:
            out.append({"role": message["role"], "content": parts})
    return out, images


def _decode_data_url(url: str, where: str):
    from PIL import Image

    if not url.startswith("data:") or ";base64," not in url:
        raise ValueError(f"{where}: only base64 data URLs are supported locally, got {url[:40]!r}")
    data = base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    with Image.open(io.BytesIO(data)) as im:
        return im.convert("RGB")


class TransformersBackend:
    """Runs the annotation models in-process with transformers (torch and transformers are
    imported on first use, not with this module).

    ``model`` in :meth:`chat` is a local folder or a Hugging Face id; each is loaded once and
    kept. A model whose config has a ``vision_config`` is loaded with ``AutoProcessor`` and
    ``AutoModelForImageTextToText``, others with ``AutoTokenizer`` and
    ``AutoModelForCausalLM``. Generation runs one request at a time (a lock), since torch
    already spreads one generation over the cores; use a small annotation concurrency.

    Parameters
    ----------
    device : str
        torch device, e.g. ``"cpu"``, ``"cuda"``.
    dtype : str
        ``"auto"`` or a torch dtype name (``"bfloat16"``).
    trust_remote_code : bool
        Passed to ``from_pretrained`` (InternVL2 needs it).
    model_kwargs : dict, optional
        Extra ``from_pretrained`` arguments.
    """

    def __init__(self, device: str = "cpu", dtype: str = "auto", trust_remote_code: bool = False,
                 model_kwargs: dict | None = None):
        self.device = device
        self.dtype = dtype
        self.trust_remote_code = trust_remote_code
        self.model_kwargs = dict(model_kwargs or {})
        self._models: dict = {}
        self._lock = threading.Lock()

    def _load(self, name: str):
        if name in self._models:
            return self._models[name]
        import torch
        from transformers import (
            AutoConfig,
            AutoModelForCausalLM,
            AutoModelForImageTextToText,
            AutoProcessor,
            AutoTokenizer,
        )

        kwargs = {"trust_remote_code": self.trust_remote_code, **self.model_kwargs}
        if self.dtype != "auto":
            kwargs["dtype"] = getattr(torch, self.dtype)
        config = AutoConfig.from_pretrained(name, trust_remote_code=self.trust_remote_code)
        if getattr(config, "vision_config", None) is not None:
            processor = AutoProcessor.from_pretrained(name, trust_remote_code=self.trust_remote_code)
            model = AutoModelForImageTextToText.from_pretrained(name, **kwargs)
        else:
            processor = AutoTokenizer.from_pretrained(name, trust_remote_code=self.trust_remote_code)
            model = AutoModelForCausalLM.from_pretrained(name, **kwargs)
        model = model.to(self.device).eval()
        self._models[name] = (model, processor)
        return model, processor

    def chat(self, messages: list[dict], *, model: str, max_tokens: int = 512, temperature: float = 0.7,
             seed: int | None = None, stop: threading.Event | None = None) -> Completion:
        """Generate one answer locally; errors become :class:`BackendError`."""
        if stop is not None and stop.is_set():
            raise BackendError("interrupted")
        hf_messages, _ = to_hf_messages(messages)
        with self._lock:
            try:
                import torch

                net, processor = self._load(model)
                inputs = processor.apply_chat_template(hf_messages, add_generation_prompt=True, tokenize=True,
                                                       return_dict=True, return_tensors="pt").to(self.device)
                if seed is not None:
                    torch.manual_seed(seed)
                sampling = {"do_sample": True, "temperature": float(temperature)} if temperature > 0 else \
                    {"do_sample": False}
                with torch.inference_mode():
                    out = net.generate(**inputs, max_new_tokens=int(max_tokens), **sampling)
                new = out[0, inputs["input_ids"].shape[1]:]
                decode = getattr(processor, "decode", None) or processor.tokenizer.decode
                text = decode(new, skip_special_tokens=True)
            except BackendError:
                raise
            except Exception as e:  # a local failure is recorded like an HTTP one
                raise BackendError(f"local generation failed: {type(e).__name__}: {e}") from e
        return Completion(text, "length" if len(new) >= max_tokens else "stop")
