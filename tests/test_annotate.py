"""megapairs.annotate against a real chat-completions server on 127.0.0.1, started here.

The server plays a deterministic pair of models: the "MLLM" answers with a description that
carries a token derived from the two images it was sent (so a mix-up between pairs shows),
the "LLM" answers with instructions carrying the token found in the description it was
given. Faults are scripted per (stage, token): HTTP 429 (with Retry-After), 5xx, 400, 401,
timeouts, truncated bodies, short reads, instruction lists in many formats, too few valid
instructions. The tests check what the server received (data URLs, model names, word
budget, demonstrations), what the journal holds, and that a run stopped midway (by an
exception from a callback, or a subprocess killed with SIGKILL) resumes to exactly the
records of an uninterrupted run without asking a finished pair again.
"""

import base64
import hashlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
from PIL import Image

import megapairs as mp
from megapairs import annotate as A
from megapairs import dataset
from megapairs.annotate import backends
from megapairs.annotate import prompts as P

ROOT = Path(__file__).resolve().parents[1]
TOKEN = re.compile(r"tok[0-9a-f]{8}")
BUDGET = re.compile(r"at most (\d+) words")

# --------------------------------------------------------------------------- the fake server


def pair_token(source: bytes, target: bytes) -> str:
    return "tok" + hashlib.sha256(source + b"|" + target).hexdigest()[:8]


def instructions_for(tok: str) -> list[str]:
    return [f"Find one like this but marked {tok}.", f"Same kind of thing showing {tok} clearly.",
            f"What if it carried the label {tok}?"]


def llm_answer(kind: str, tok: str) -> tuple[str, str]:
    """(content, finish_reason) of the text stage in format ``kind``."""
    items = instructions_for(tok)
    if kind == "json":
        return json.dumps(items), "stop"
    if kind == "numbered":
        return "Here are three queries:\n\n" + "\n".join(f"{i}. {s}" for i, s in enumerate(items, 1)) + \
            "\n\nI hope these help!", "stop"
    if kind == "paren-numbered":
        return "\n".join(f"{i}) {s}" for i, s in enumerate(items, 1)), "stop"
    if kind == "bulleted":
        return "Queries:\n" + "\n".join(f"{m} {s}" for m, s in zip("-*\u2022", items)), "stop"
    if kind == "prose":
        return "Sure! Based on the comparison, good queries would be " + json.dumps(items) + \
            " — each one avoids describing the first picture.", "stop"
    if kind == "fenced":
        return "```json\n" + json.dumps(items, indent=2) + "\n```", "stop"
    if kind == "python-list":
        return "[" + ", ".join(repr(s) for s in items) + "]", "stop"
    if kind == "object":
        return json.dumps({"queries": items}), "stop"
    if kind == "labelled":
        return "\n".join(f"Query {i}: \"{s}\"" for i, s in enumerate(items, 1)), "stop"
    if kind == "truncated-list":  # cut off by the token limit inside a fourth item
        return json.dumps(items)[:-1] + ', "And a fourth one that never', "length"
    if kind == "two":
        return json.dumps(items[:2]), "stop"
    if kind == "dup-forbidden":
        return json.dumps([items[0], items[0].upper(), f"The target image with {tok}.", items[1]]), "stop"
    raise AssertionError(kind)


class FakeModels:
    """State of the scripted server: requests received, faults still to inject."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests = []
        self.faults: dict[tuple[str, str], list[str]] = {}
        self.always: dict[tuple[str, str], str] = {}  # a fault on every call, however often asked
        self.delay = 0.0
        self.status_every = None

    def script(self, stage: str, tok: str, *actions: str) -> None:
        self.faults.setdefault((stage, tok), []).extend(actions)

    def next_action(self, stage: str, tok: str) -> str:
        with self.lock:
            queue = self.faults.get((stage, tok))
            return queue.pop(0) if queue else self.always.get((stage, tok), "ok")

    def of(self, stage: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["stage"] == stage]


def make_handler(models: FakeModels):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def reply(self, status, payload: bytes, headers=(), length=None):
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload) if length is None else length))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if self.path != "/v1/chat/completions":
                return self.reply(404, b'{"error": "no such route"}')
            content = body["messages"][0]["content"]
            if isinstance(content, list):
                stage = "mllm"
                urls = [p["image_url"]["url"] for p in content if p["type"] == "image_url"]
                raw = [base64.b64decode(u.split(",", 1)[1]) for u in urls]
                tok = pair_token(*raw)
                text = content[-1]["text"]
            else:
                stage = "llm"
                text = content
                tok = TOKEN.findall(text.rsplit("Comparison:", 1)[-1])[0]
            with models.lock:
                models.requests.append({"time": time.monotonic(), "stage": stage, "tok": tok, "body": body,
                                        "headers": dict(self.headers), "text": text})
            if models.delay:
                time.sleep(models.delay)
            action = models.next_action(stage, tok)
            try:
                self.answer(stage, tok, text, action)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def answer(self, stage, tok, text, action):
            if action.isdigit():
                headers = [("Retry-After", "0.3")] if action == "429" else []
                return self.reply(int(action), json.dumps({"error": {"message": f"injected {action}"}}).encode(),
                                  headers)
            if action == "timeout":  # the client gives up after 1 s (a margin for a loaded machine)
                time.sleep(2.5)
                return self.reply(500, b"{}")
            if action == "trickle":  # every byte within the read timeout, the whole answer far beyond it
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "40")
                self.end_headers()
                for _ in range(40):
                    self.wfile.write(b" ")
                    self.wfile.flush()
                    time.sleep(0.1)
                return None
            if action == "huge-body":  # a well-formed answer padded past the client's cap
                pad = b" " * ((16 << 20) + 1)  # one byte past the default cap
                return self.reply(200, b'{"choices": []' + pad + b"}")
            if action == "truncated-body":
                return self.reply(200, b'{"choices": [{"message": {"role": "assistant", "cont')
            if action == "short-read":
                self.reply(200, b'{"choices": [', length=500)
                self.close_connection = True
                return None
            if stage == "mllm":
                if action == "short-description":
                    content, finish = "Two pictures.", "stop"
                elif action == "cut-description":
                    content, finish = "Both images show a thing. However, the Source", "length"
                else:
                    budget = BUDGET.search(text).group(1)
                    content = (f"Both images show a test card {tok}. However, the Source Image has one colour, "
                               f"whereas the Target Image has another, described in {budget} words or fewer.")
                    finish = "stop"
            else:
                content, finish = llm_answer("json" if action == "ok" else action, tok)
            payload = {"id": "x", "object": "chat.completion", "model": "fake",
                       "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                    "finish_reason": finish}]}
            return self.reply(200, json.dumps(payload).encode())

    return Handler


@pytest.fixture
def server():
    models = FakeModels()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(models))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    models.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield models
    finally:
        httpd.shutdown()
        httpd.server_close()


# --------------------------------------------------------------------------- data


def write_images(folder: Path, n: int) -> list[str]:
    """n small images, JPEG and PNG alternating, each a distinct colour; returns their keys."""
    keys = []
    for i in range(n):
        key = f"part-{i % 2}/{i:04d}.{'jpg' if i % 2 == 0 else 'png'}"
        path = folder / key
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12 + i, 10), ((37 * i) % 256, (91 * i) % 256, (53 * i + 7) % 256)).save(path)
        keys.append(key)
    return keys


def make_pairs(keys: list[str], n_pairs: int) -> list[dict]:
    n = len(keys)
    assert n_pairs <= 2 * n
    pairs = []
    for i in range(n_pairs):
        q = i % n
        t = (q + 1 + (5 * i + i // n) % (n - 1)) % n  # never q; distinct (q, t) for up to 2n pairs
        pairs.append({"q_img": keys[q], "t_img": keys[t], "hns": [keys[q], keys[(q + 2) % n], keys[(q + 5) % n]]})
    return pairs


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "images"
    keys = write_images(root, 16)
    return root, keys


def tok_of(root: Path, pair: dict) -> str:
    return pair_token((root / pair["q_img"]).read_bytes(), (root / pair["t_img"]).read_bytes())


def backend_for(server, **kw):
    opts = {"timeout": 1.0, "max_attempts": 4, "backoff_base": 0.01, "backoff_max": 0.05}
    opts.update(kw)
    return A.OpenAIBackend(server.url, api_key="test-key", **opts)


def run(server, pairs, root, journal=None, backend=None, **kw):
    backend = backend or backend_for(server)
    opts = {"mllm_model": "fake-mllm", "llm_model": "fake-llm", "concurrency": 4, "progress": False}
    opts.update(kw)
    with backend:
        return A.annotate(pairs, root, backend=backend, journal=journal, **opts)


def journal_entries(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- prompts


def test_prompt_pool_and_templates():
    p = A.load_prompts("v1")
    assert p.version == "v1" and len(p.demonstrations) == 50
    assert len({d.id for d in p.demonstrations}) == 50
    assert len({d.connection for d in p.demonstrations}) == 50
    shape = re.compile(r"^Both images .+\. However, the Source Image .+, whereas the Target Image .+\.$")
    for d in p.demonstrations:
        assert shape.match(d.connection), d.id
        kept, rejected = A.validate_instructions(d.queries)  # >= 3, no duplicates, no "source image"
        assert len(kept) == len(d.queries) and not rejected, d.id
    assert "$" not in p.mllm_text(73) and "at most 73 words" in p.mllm_text(73)
    assert A.load_prompts("v1") is p and len(p.digest) == 64
    with pytest.raises(ValueError, match="unknown prompt version 'v0'.*'v1'"):
        A.load_prompts("v0")
    with pytest.raises(ValueError, match="folder name"):
        A.load_prompts("../v1")


def test_prompt_construction_is_seeded_per_pair():
    p = A.load_prompts()
    plans = [P.plan_pair(p, 0, f"q{i}.jpg", f"t{i}.jpg") for i in range(400)]
    budgets = [plan.word_budget for plan in plans]
    assert min(budgets) == 60 and max(budgets) == 100 and len(set(budgets)) == 41  # whole range, inclusive
    for plan in plans:
        ids = [d.id for d in plan.demonstrations]
        assert len(ids) == 5 and len(set(ids)) == 5
    used = Counter(d.id for plan in plans for d in plan.demonstrations)
    assert len(used) == 50  # every demonstration gets drawn
    # deterministic: same (seed, pair) -> same plan; another seed or another call -> other draws
    assert P.plan_pair(p, 0, "q7.jpg", "t7.jpg") == plans[7]
    assert sum(P.plan_pair(p, 1, f"q{i}.jpg", f"t{i}.jpg") != plans[i] for i in range(50)) >= 45
    first = [d.id for d in P.demonstrations_for_call(p, 0, "q1.jpg", "t1.jpg", 0)]
    second = [d.id for d in P.demonstrations_for_call(p, 0, "q1.jpg", "t1.jpg", 1)]
    assert first == [d.id for d in plans[1].demonstrations] and first != second
    # the LLM prompt holds the 5 demonstrations, then the description last
    text = p.llm_text("Both images show a cat.  However,\nthe Source Image x, whereas the Target Image y.",
                      plans[0].demonstrations)
    assert text.count("Comparison:") == 6
    for d in plans[0].demonstrations:
        assert d.connection in text and json.dumps(list(d.queries)) in text
    assert text.rstrip().endswith("Comparison: Both images show a cat. However, the Source Image x, whereas "
                                  "the Target Image y.\nQueries:")


def test_messages_carry_images_as_data_urls(tmp_path):
    p = A.load_prompts()
    jpeg, png = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (40, 20), (200, 10, 10)).save(jpeg, format="JPEG")
    Image.new("RGB", (30, 30), (10, 200, 10)).save(png, format="PNG")
    msgs = P.mllm_messages(p, jpeg.getvalue(), png.getvalue(), 64)
    parts = msgs[0]["content"]
    assert [x["type"] for x in parts] == ["text", "image_url", "text", "image_url", "text"]
    assert parts[0]["text"] == "Source Image:" and parts[2]["text"] == "Target Image:"
    assert parts[1]["image_url"]["url"] == "data:image/jpeg;base64," + base64.b64encode(jpeg.getvalue()).decode()
    assert parts[3]["image_url"]["url"] == "data:image/png;base64," + base64.b64encode(png.getvalue()).decode()
    assert "at most 64 words" in parts[4]["text"]
    # max_image_side shrinks (aspect kept) and re-encodes as JPEG; small images pass untouched
    small = P.mllm_messages(p, jpeg.getvalue(), png.getvalue(), 64, max_side=16)[0]["content"]
    data = base64.b64decode(small[1]["image_url"]["url"].split(",", 1)[1])
    assert small[1]["image_url"]["url"].startswith("data:image/jpeg") and Image.open(io.BytesIO(data)).size == (16, 8)
    same = P.mllm_messages(p, jpeg.getvalue(), png.getvalue(), 64, max_side=64)[0]["content"]
    assert same[1] == parts[1] and same[3] == parts[3]
    # BMP is not a web format: converted to JPEG
    bmp = io.BytesIO()
    Image.new("RGB", (8, 8)).save(bmp, format="BMP")
    assert P.image_data_url(bmp.getvalue()).startswith("data:image/jpeg;base64,")


# --------------------------------------------------------------------------- parsing


ITEMS = ["Find one like this but red.", "Same kind of thing outdoors.", "What if it were at night?"]


@pytest.mark.parametrize("text", [
    json.dumps(ITEMS),
    "Here you go:\n```json\n" + json.dumps(ITEMS, indent=2) + "\n```\nEnjoy.",
    "[" + ", ".join(repr(s) for s in ITEMS) + "]",
    json.dumps({"text_queries": ITEMS}),
    json.dumps([{"query": s} for s in ITEMS]),
    "Sure, here are some queries:\n1. " + ITEMS[0] + "\n2. " + ITEMS[1] + "\n3. " + ITEMS[2] + "\nLet me know!",
    "1) " + ITEMS[0] + "\n2) " + ITEMS[1] + "\n3) " + ITEMS[2],
    "- " + ITEMS[0] + "\n* " + ITEMS[1] + "\n\u2022 " + ITEMS[2],
    "**1.** " + ITEMS[0] + "\n**2.** " + ITEMS[1] + "\n**3.** " + ITEMS[2],
    "\n".join(f'Query {i}: "{s}"' for i, s in enumerate(ITEMS, 1)),
    "\n".join(f'"{s}",' for s in ITEMS),
    json.dumps(ITEMS)[:-1] + ', "A fourth that was cut o',
    "\n".join(ITEMS),
    "<think>Maybe [\"a draft query\", \"another\"]?</think>\n" + json.dumps(ITEMS),
], ids=["json", "fenced+prose", "python-list", "object", "object-items", "numbered+prose", "paren-numbered",
        "bullets", "markdown-bold", "labelled", "quoted-lines", "truncated-array", "plain-lines", "think-block"])
def test_parse_instructions_formats(text):
    assert A.parse_instructions(text) == ITEMS


def test_parse_instructions_odd_inputs():
    assert A.parse_instructions("") == []
    assert A.parse_instructions("   \n ") == []
    assert A.parse_instructions("Queries:\n") == []
    assert A.parse_instructions('["  spaced   out  text ", ""]') == ["spaced out text"]
    with pytest.raises(TypeError):
        A.parse_instructions(None)


def test_validate_instructions():
    items = ["Find a red one.", "find a RED one!", "Show the Source Image in blue.", "Ok",
             "word " * 61, "Same but at night.", "A target image of a dog.", "Make it snow."]
    kept, rejected = A.validate_instructions(items)
    assert kept == ["Find a red one.", "Same but at night.", "Make it snow."]
    reasons = dict(rejected)
    assert reasons["find a RED one!"] == "duplicate"
    assert reasons["Show the Source Image in blue."] == "names the 'source image'"
    assert reasons["A target image of a dog."] == "names the 'target image'"
    variants = ["Like the source-image, in red.", "The SourceImage at night.", "Both target_images, but blue."]
    assert [r for _, r in A.validate_instructions(variants + ITEMS)[1]] == \
        ["names the 'source image'", "names the 'source image'", "names the 'target image'"]
    assert A.validate_instructions(["A resource image of a cat."] + ITEMS)[1] == []  # whole words only
    assert reasons["Ok"].startswith("shorter") and reasons["word " * 61].startswith("longer")
    assert A.validate_instructions(items, min_count=2, max_count=2)[0] == kept[:2]
    with pytest.raises(A.OutputError, match=r"2 valid instructions, need at least 3; rejected: 1 duplicate, "
                                            r"1 names the 'source image'"):
        A.validate_instructions(["Find a red one.", "find a red one", "Source image but red.", "Make it snow."])
    assert A.check_description('"Both images show a dog on a beach at noon."') == \
        "Both images show a dog on a beach at noon."
    assert A.check_description("<think>Two photos...</think>\nBoth images show a dog on a beach at noon.") == \
        "Both images show a dog on a beach at noon."
    with pytest.raises(A.OutputError, match="cut off"):
        A.check_description("Both images show " * 5, "length")
    with pytest.raises(A.OutputError, match="2 words"):
        A.check_description("Two dogs.")


# --------------------------------------------------------------------------- end to end


def test_annotate_end_to_end_requests(server, corpus, tmp_path):
    root, keys = corpus
    pairs = make_pairs(keys, 8)
    journal = tmp_path / "j.jsonl"
    result = run(server, pairs, root, journal, seed=5)

    assert result.stats["done"] == 8 and result.stats["failed"] == 0 and not result.failures
    assert [(r["q_img"], r["t_img"], r["hns"]) for r in result.records] == \
        [(p["q_img"], p["t_img"], p["hns"]) for p in pairs]
    for pair, rec in zip(pairs, result.records):
        assert rec["q_text"] == instructions_for(tok_of(root, pair))  # each answer went to its own pair
    mllm, llm = server.of("mllm"), server.of("llm")
    assert len(mllm) == 8 and len(llm) == 8  # one request per stage and pair, nothing repeated

    entries = {(e["q_img"], e["t_img"]): e for e in journal_entries(journal) if e["event"] == "done"}
    assert journal_entries(journal)[0]["settings"]["prompt_version"] == "v1"
    pool = {d.id: d for d in A.load_prompts().demonstrations}
    for req in mllm:
        body, headers = req["body"], {k.lower(): v for k, v in req["headers"].items()}
        assert body["model"] == "fake-mllm" and headers["authorization"] == "Bearer test-key"
        assert body["max_tokens"] == 512 and body["temperature"] == 0.7 and isinstance(body["seed"], int)
        parts = body["messages"][0]["content"]
        urls = [x["image_url"]["url"] for x in parts if x["type"] == "image_url"]
        pair = next(p for p in pairs if tok_of(root, p) == req["tok"])
        for url, key in zip(urls, (pair["q_img"], pair["t_img"])):
            mime = "image/jpeg" if key.endswith(".jpg") else "image/png"
            assert url == f"data:{mime};base64," + base64.b64encode((root / key).read_bytes()).decode()
        budget = int(BUDGET.search(req["text"]).group(1))
        entry = entries[(pair["q_img"], pair["t_img"])]
        assert 60 <= budget <= 100 and budget == entry["word_budget"]
        assert budget == P.plan_pair(A.load_prompts(), 5, pair["q_img"], pair["t_img"]).word_budget
    for req in llm:
        assert req["body"]["model"] == "fake-llm"
        pair = next(p for p in pairs if tok_of(root, p) == req["tok"])
        entry = entries[(pair["q_img"], pair["t_img"])]
        shown = re.findall(r"^Comparison: (.*)$", req["text"], re.MULTILINE)
        assert len(shown) == 6 and shown[-1] == entry["description"]
        assert shown[:5] == [pool[i].connection for i in entry["demonstrations"]]
        assert len(set(entry["demonstrations"])) == 5
    assert result.metadata["annotate"]["prompt_digest"] == A.load_prompts().digest
    assert result.metadata["annotate"]["mllm_model"] == "fake-mllm"
    # the journal alone gives the same records
    records, failures, metadata = A.records_from_journal(journal)
    key = lambda r: (r["q_img"], r["t_img"])
    assert sorted(records, key=key) == sorted(result.records, key=key) and failures == []
    assert metadata == result.metadata
    # a second call asks nothing
    again = run(server, pairs, root, journal, seed=5)
    assert again.records == result.records and again.stats["asked"] == 0 and again.stats["resumed_done"] == 8
    assert len(server.of("mllm")) == 8


def test_timeout_bounds_the_whole_attempt(server, corpus):
    """A server that trickles bytes faster than the read timeout but never finishes in time
    is a timeout (retried), not a worker held forever."""
    root, keys = corpus
    pairs = make_pairs(keys, 1)
    server.script("mllm", tok_of(root, pairs[0]), "trickle")
    backend = backend_for(server)
    result = run(server, pairs, root, backend=backend)
    # finished, the 4 s trickle would be a bad body (40 spaces); cut at 1 s it is a timeout
    assert result.stats["done"] == 1 and result.stats["backend"]["timeouts"] == 1
    assert "bad_responses" not in result.stats["backend"]


def test_response_body_limit(server, corpus, monkeypatch):
    """A body over MAX_RESPONSE_BYTES is refused while it arrives (a bad response, retried),
    not read whole; a raised limit reads it."""
    root, keys = corpus
    pairs = make_pairs(keys, 1)
    server.script("mllm", tok_of(root, pairs[0]), "huge-body")
    result = run(server, pairs, root, backend=backend_for(server))  # retried, then answered
    assert result.stats["done"] == 1 and result.stats["backend"]["bad_responses"] == 1
    server.script("mllm", tok_of(root, pairs[0]), "huge-body")
    result = run(server, pairs, root, backend=backend_for(server, max_attempts=1))
    assert "response body larger than 16777216 bytes" in result.failures[0]["reason"]
    monkeypatch.setattr(backends, "MAX_RESPONSE_BYTES", backends.MAX_RESPONSE_BYTES + 64)
    server.script("mllm", tok_of(root, pairs[0]), "huge-body")
    result = run(server, pairs, root, backend=backend_for(server, max_attempts=1))
    assert "no choices[0].message" in result.failures[0]["reason"]  # read whole: it holds no answer


def test_transient_faults_are_retried(server, corpus):
    root, keys = corpus
    pairs = make_pairs(keys, 7)
    toks = [tok_of(root, p) for p in pairs]
    server.script("mllm", toks[0], "429", "429")
    server.script("mllm", toks[1], "500", "503")
    server.script("llm", toks[2], "timeout")
    server.script("mllm", toks[3], "truncated-body")
    server.script("llm", toks[4], "short-read", "502")
    server.script("llm", toks[5], "429", "timeout", "500")  # succeeds on the 4th and last attempt
    backend = backend_for(server)
    result = run(server, pairs, root, backend=backend)
    assert result.stats["done"] == 7 and result.failures == []
    for pair, rec in zip(pairs, result.records):
        assert rec["q_text"] == instructions_for(tok_of(root, pair))
    calls = Counter((r["stage"], r["tok"]) for r in server.requests)
    assert calls[("mllm", toks[0])] == 3 and calls[("mllm", toks[1])] == 3 and calls[("llm", toks[2])] == 2
    assert calls[("mllm", toks[3])] == 2 and calls[("llm", toks[4])] == 3 and calls[("llm", toks[5])] == 4
    stats = result.stats["backend"]
    assert stats["status_429"] == 3 and stats["timeouts"] == 2 and stats["bad_responses"] == 1
    assert stats["connection_errors"] == 1 and stats["retries"] == 11 and "failed" not in stats
    # Retry-After: 0.3 is honoured although the back-off would wait at most 0.05 s
    times = [r["time"] for r in server.requests if r["stage"] == "mllm" and r["tok"] == toks[0]]
    assert times[1] - times[0] >= 0.29 and times[2] - times[1] >= 0.29


@pytest.mark.parametrize("kind", ["numbered", "paren-numbered", "bulleted", "prose", "fenced", "python-list",
                                  "object", "labelled", "truncated-list"])
def test_instruction_list_formats_from_server(server, corpus, kind):
    root, keys = corpus
    pairs = make_pairs(keys, 2)
    server.script("llm", tok_of(root, pairs[0]), kind)
    result = run(server, pairs, root)
    assert result.failures == [] and result.stats["output_retries"] == 0
    assert result.records[0]["q_text"] == instructions_for(tok_of(root, pairs[0]))


def test_failures_are_recorded_with_reasons_and_retried(server, corpus, tmp_path):
    root, keys = corpus
    pairs = make_pairs(keys, 7)
    pairs[6]["t_img"] = "part-0/missing.jpg"
    key = [(p["q_img"], p["t_img"]) for p in pairs]
    toks = [tok_of(root, p) for p in pairs[:6]]
    server.script("llm", toks[0], "two", "dup-forbidden")     # never 3 valid instructions
    server.script("mllm", toks[1], "500", "500", "500", "500")  # every attempt fails
    server.script("mllm", toks[2], "400")                       # rejected: not retried
    server.script("mllm", toks[3], "short-description")         # re-asked once, then fine
    server.script("mllm", toks[4], "cut-description", "short-description")  # unusable twice
    server.script("llm", toks[5], "two")                        # re-asked once, then fine
    journal = tmp_path / "j.jsonl"
    result = run(server, pairs, root, journal)

    assert [(r["q_img"], r["t_img"]) for r in result.records] == [key[3], key[5]]
    assert [(x["q_img"], x["t_img"]) for x in result.failures] == [key[i] for i in (0, 1, 2, 4, 6)]  # input order
    assert result.stats["done"] == 2 and result.stats["failed"] == 5
    assert result.stats["failed_by_stage"] == {"llm": 1, "mllm": 3, "image": 1}
    assert result.stats["output_retries"] == 4
    f0, f1, f2, f4, f6 = result.failures
    assert f0["stage"] == "llm" and f0["status"] is None and f0["reason"] == (
        "unusable instructions after 2 answers: 2 valid instructions, need at least 3; "
        "rejected: 1 duplicate, 1 names the 'target image'")
    assert f1["stage"] == "mllm" and f1["status"] == 500 and f1["reason"].startswith("HTTP 500: ") \
        and "injected 500" in f1["reason"] and f1["reason"].endswith("(gave up after 4 attempts)")
    assert f2["stage"] == "mllm" and f2["status"] == 400 and f2["reason"].startswith("HTTP 400")
    assert f4["stage"] == "mllm" and f4["reason"] == (
        "unusable description after 2 answers: description has 2 words, need at least 8")
    assert f6["stage"] == "image" and "missing.jpg" in f6["reason"] and "FileNotFoundError" in f6["reason"]
    calls = Counter((r["stage"], r["tok"]) for r in server.requests)
    assert calls[("llm", toks[0])] == 2 and calls[("mllm", toks[1])] == 4 and calls[("mllm", toks[2])] == 1
    assert calls[("mllm", toks[3])] == 2 and calls[("mllm", toks[4])] == 2 and calls[("llm", toks[5])] == 2
    assert ("llm", toks[4]) not in calls
    failed_lines = [e for e in journal_entries(journal) if e["event"] == "failed"]
    assert [(e["stage"], e["reason"]) for e in sorted(failed_lines, key=lambda e: key.index((e["q_img"], e["t_img"])))] \
        == [(x["stage"], x["reason"]) for x in result.failures]

    # resuming without retry_failed asks nothing and reports the same failures
    n = len(server.requests)
    again = run(server, pairs, root, journal)
    assert len(server.requests) == n and again.failures == result.failures and again.records == result.records
    assert again.stats["resumed_failed"] == 5 and again.stats["asked"] == 0
    # with retry_failed the server (its faults used up) is asked again; the missing image still fails
    retried = run(server, pairs, root, journal, retry_failed=True)
    assert retried.stats["asked"] == 5 and retried.stats["new_done"] == 4
    assert [(r["q_img"], r["t_img"]) for r in retried.records] == key[:6]
    assert [(x["q_img"], x["t_img"], x["stage"]) for x in retried.failures] == [(*key[6], "image")]
    for pair, rec in zip(pairs, retried.records):
        assert rec["q_text"] == instructions_for(tok_of(root, pair))
    assert read_states(journal) == (6, 1)


def read_states(journal):
    state = A.read_journal(journal)
    return len(state.done), len(state.failed)


def test_unauthorised_stops_the_run(server, corpus, tmp_path):
    root, keys = corpus
    pairs = make_pairs(keys, 4)
    server.script("mllm", tok_of(root, pairs[0]), "401")
    with pytest.raises(A.BackendError, match="HTTP 401") as info:
        run(server, pairs, root, tmp_path / "j.jsonl", concurrency=1)
    assert info.value.fatal and info.value.status == 401
    assert sum(r["stage"] == "mllm" for r in server.requests) == 1  # not retried, nothing after it
    assert read_states(tmp_path / "j.jsonl") == (0, 0)  # not a failure of the pair: the run stopped


# --------------------------------------------------------------------------- resume


def test_interrupted_run_resumes_to_the_same_records(server, corpus, tmp_path):
    root, keys = corpus
    pairs = make_pairs(keys, 24)
    server.always[("llm", tok_of(root, pairs[3]))] = "two"  # a failure must survive the resume too
    full = run(server, pairs, root, tmp_path / "full.jsonl", concurrency=3)
    assert full.stats["done"] == 23 and full.stats["failed"] == 1
    server.requests.clear()

    seen = []

    def stop_after_7(entry):
        seen.append(entry)
        if len(seen) == 7:
            raise KeyboardInterrupt

    journal = tmp_path / "j.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(server, pairs, root, journal, concurrency=3, on_record=stop_after_7)
    state = A.read_journal(journal)
    finished = set(state.done) | set(state.failed)
    assert len(finished) >= 7 and len(finished) < 24
    first_run = Counter((r["stage"], r["tok"]) for r in server.requests)
    server.requests.clear()

    resumed = run(server, pairs, root, journal, concurrency=3)
    assert resumed.records == full.records and resumed.failures == full.failures
    asked = {r["tok"] for r in server.requests}
    for pair in pairs:
        key = (pair["q_img"], pair["t_img"])
        if key in finished:  # finished before the stop: never asked again
            assert tok_of(root, pair) not in asked
    assert resumed.stats["asked"] == 24 - len(finished)
    lines = journal_entries(journal)
    keys_written = [(e["q_img"], e["t_img"]) for e in lines[1:]]
    assert len(keys_written) == len(set(keys_written)) == 24  # each pair journaled exactly once
    assert sum(first_run.values()) > 0


KILLED_RUN = """
import sys
from megapairs.annotate.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def test_sigkilled_run_resumes_to_the_same_records(server, corpus, tmp_path):
    root, keys = corpus
    pairs = make_pairs(keys, 30)
    pairs_file = tmp_path / "pairs.jsonl"
    dataset.write_jsonl(pairs, pairs_file)
    full = run(server, pairs, root, tmp_path / "full.jsonl", concurrency=2,
               mllm_model="m", llm_model="l")
    server.requests.clear()

    out = tmp_path / "out.parquet"
    journal = tmp_path / "out.parquet.journal.jsonl"
    server.delay = 0.03
    env = {**os.environ, "MEGAPAIRS_MLLM_MODEL": "m", "MEGAPAIRS_LLM_MODEL": "l", "MEGAPAIRS_API_BASE": server.url}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(pairs_file), str(out), "--images", str(root),
                             "--concurrency", "2", "--no-progress"], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if journal.exists() and journal.read_text().count('"event": "done"') >= 6:
                break
            if proc.poll() is not None:
                pytest.fail(f"the annotation process ended early: {proc.stderr.read().decode()[-2000:]}")
            time.sleep(0.01)
        else:
            pytest.fail("the annotation process wrote no journal entries")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    server.delay = 0.0
    with open(journal, "ab") as fh:  # and a write torn by the crash
        fh.write(b'{"event": "done", "q_img": "part-0/0000.jpg", "t_im')
    state = A.read_journal(journal)
    assert state.torn_tail and 6 <= len(state.done) < 30
    before = dict(state.done)
    server.requests.clear()

    resumed = run(server, pairs, root, journal, concurrency=2, mllm_model="m", llm_model="l")
    assert resumed.records == full.records and resumed.failures == []
    asked = {r["tok"] for r in server.requests}
    assert all(tok_of(root, {"q_img": q, "t_img": t}) not in asked for q, t in before)
    assert resumed.stats["resumed_done"] == len(before) and resumed.stats["asked"] == 30 - len(before)
    lines = journal.read_bytes().splitlines()
    assert all(json.loads(line) for line in lines)  # the torn line is gone
    assert len(lines) == 31


# --------------------------------------------------------------------------- journal


def test_journal_torn_tail_corruption_settings_and_lock(tmp_path):
    path = tmp_path / "j.jsonl"
    settings = {"seed": 1, "word_budget": (60, 100)}
    with A.Journal(path, settings) as j:
        j.append({"event": "failed", "q_img": "a", "t_img": "b", "stage": "llm", "reason": "x", "status": None})
        j.append({"event": "done", "q_img": "a", "t_img": "b", "hns": [], "q_text": ["1 2", "3 4", "5 6"]})
        with pytest.raises(RuntimeError, match="in use by another run"):
            A.Journal(path, settings)
    path.write_bytes(path.read_bytes() + b'{"event": "failed", "q_im')
    state = A.read_journal(path)
    assert state.torn_tail and list(state.done) == [("a", "b")] and not state.failed and state.lines == 3
    with A.Journal(path, settings) as j:  # tuples and lists compare equal once stored
        assert not path.read_bytes().endswith(b"q_im") and j.state.lines == 3
    with pytest.raises(ValueError, match=r"other settings \(seed: 1 there, 2 now\)"):
        A.Journal(path, {"seed": 2, "word_budget": [60, 100]})
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(lines[0] + b"not json\n" + lines[1])
    with pytest.raises(ValueError, match=r"j.jsonl:2: not a journal entry"):
        A.read_journal(path)
    path.write_bytes(b'{"event": "header", "format": "something/else"}\n')
    with pytest.raises(ValueError, match="format 'something/else'"):
        A.read_journal(path)


# --------------------------------------------------------------------------- configuration and inputs


def test_environment_configuration(server, corpus, monkeypatch):
    root, keys = corpus
    pairs = make_pairs(keys, 2)
    monkeypatch.setenv("MEGAPAIRS_API_BASE", server.url[:-3])  # no path: /v1 is added
    monkeypatch.setenv("MEGAPAIRS_API_KEY", "k-megapairs")
    monkeypatch.setenv("OPENAI_API_KEY", "k-openai")
    monkeypatch.setenv("MEGAPAIRS_MLLM_MODEL", "env-mllm")
    monkeypatch.setenv("MEGAPAIRS_LLM_MODEL", "env-llm")
    result = A.annotate(pairs, root, progress=False)  # backend built from the environment
    assert result.stats["done"] == 2
    assert {r["body"]["model"] for r in server.of("mllm")} == {"env-mllm"}
    assert {r["body"]["model"] for r in server.of("llm")} == {"env-llm"}
    assert {r["headers"]["Authorization"] for r in server.requests} == {"Bearer k-megapairs"}
    monkeypatch.delenv("MEGAPAIRS_API_KEY")
    with A.OpenAIBackend() as b:
        assert b.url == server.url + "/chat/completions"
        b.chat([{"role": "user", "content": "Comparison: x tok0123abcd"}], model="m")
    assert server.requests[-1]["headers"]["Authorization"] == "Bearer k-openai"
    monkeypatch.delenv("MEGAPAIRS_MLLM_MODEL")
    with pytest.raises(ValueError, match="MEGAPAIRS_MLLM_MODEL"):
        A.annotate(pairs, root, backend=backend_for(server), progress=False)
    with pytest.raises(ValueError, match="http"):
        A.OpenAIBackend("localhost:8000")
    with pytest.raises(ValueError, match="max_attempts"):
        A.OpenAIBackend(server.url, max_attempts=0)


def test_input_validation(server, corpus):
    root, keys = corpus
    backend = backend_for(server)
    kw = {"backend": backend, "mllm_model": "m", "llm_model": "l", "progress": False}
    pairs = make_pairs(keys, 3)
    with pytest.raises(ValueError, match=r"pairs\[2\] repeats pairs\[0\]"):
        A.annotate(pairs[:2] + [pairs[0]], root, **kw)
    with pytest.raises(ValueError, match=r"pairs\[0\]: query and target are the same image"):
        A.annotate([{"q_img": keys[0], "t_img": keys[0]}], root, **kw)
    with pytest.raises(ValueError, match=r"pairs\[1\]: 't_img' must be a non-empty string"):
        A.annotate([pairs[0], {"q_img": keys[0]}], root, **kw)
    with pytest.raises(ValueError, match="word_budget needs"):
        A.annotate(pairs, root, word_budget=(100, 60), **kw)
    with pytest.raises(ValueError, match="concurrency"):
        A.annotate(pairs, root, concurrency=0, **kw)
    with pytest.raises(ValueError, match="image key '../x.jpg'.*unsafe"):
        dataset.image_loader(root)("../x.jpg")
    assert server.requests == []


def test_annotate_mined_table_and_shards(server, corpus, tmp_path):
    """Pairs straight from mining's table + keys, images from WebDataset shards."""
    root, keys = corpus
    table = pa.Table.from_pydict({
        "query": [0, 0, 5], "target": [3, 4, 9], "spaces": [["a"], ["a"], ["b"]], "scores": [[0.9], [0.85], [0.81]],
        "hard_negatives": [[0, 4, 7], [0, 3, 7], [5, 1, 2]]}, schema=mp.mining.SCHEMA)
    with pytest.raises(ValueError, match="pass keys="):
        run(server, table, root)
    shards = dataset.write_shards(keys, root, tmp_path / "shards", max_count=5)
    store = dataset.ShardReader(shards.paths)
    result = run(server, mp.mining.MiningResult(table), store, keys=keys)
    assert [(r["q_img"], r["t_img"], r["hns"]) for r in result.records] == \
        [(keys[0], keys[3], [keys[0], keys[4], keys[7]]), (keys[0], keys[4], [keys[0], keys[3], keys[7]]),
         (keys[5], keys[9], [keys[5], keys[1], keys[2]])]
    # PNGs were re-encoded as JPEG in the shards: the server saw the shard bytes
    first = server.of("mllm")[0]["body"]["messages"][0]["content"]
    assert all(p["image_url"]["url"].startswith("data:image/jpeg;base64,") for p in first if p["type"] == "image_url")


# --------------------------------------------------------------------------- transformers backend


def test_to_hf_messages():
    p = A.load_prompts()
    src, tgt = io.BytesIO(), io.BytesIO()
    Image.new("RGB", (20, 10), (255, 0, 0)).save(src, format="PNG")
    Image.new("RGB", (6, 9), (0, 0, 255)).save(tgt, format="JPEG")
    messages, images = A.backends.to_hf_messages(P.mllm_messages(p, src.getvalue(), tgt.getvalue(), 70))
    content = messages[0]["content"]
    assert [c["type"] for c in content] == ["text", "image", "text", "image", "text"]
    assert [im.size for im in images] == [(20, 10), (6, 9)] and images[0].getpixel((3, 3)) == (255, 0, 0)
    assert content[1]["image"] is images[0] and "at most 70 words" in content[4]["text"]
    text_only, none = A.backends.to_hf_messages(P.llm_messages(p, "Both images x.", p.demonstrations[:5]))
    assert none == [] and isinstance(text_only[0]["content"], str) and text_only[0]["role"] == "user"
    with pytest.raises(ValueError, match="data URLs"):
        A.backends.to_hf_messages([{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "http://example.com/a.jpg"}}]}])


def test_importing_megapairs_leaves_heavy_optional_packages_alone():
    """torch, transformers and httpx load only when a backend or InfoNCELoss is used."""
    code = ("import sys, megapairs, megapairs.annotate, megapairs.dataset, megapairs.evaluation; "
            "print(sorted(m for m in ('torch', 'transformers', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_transformers_backend_runs_a_tiny_random_model(tmp_path):
    """A 1-layer random Llama with a word-level tokenizer, built here: checks the loading,
    chat-template, generation and decoding plumbing (the text is noise)."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", "user", "assistant", ":", "hello", "world",
                                         "find", "a", "red", "one"])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="</s>")
    fast.chat_template = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }} {% endfor %}"
                          "{% if add_generation_prompt %}assistant : {% endif %}")
    config = transformers.LlamaConfig(vocab_size=len(vocab), hidden_size=16, intermediate_size=32,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=2)
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path / "tiny")
    fast.save_pretrained(tmp_path / "tiny")
    backend = A.TransformersBackend()
    out = backend.chat([{"role": "user", "content": "find a red one"}], model=str(tmp_path / "tiny"),
                       max_tokens=4, temperature=0.0, seed=0)
    assert isinstance(out, A.Completion) and isinstance(out.text, str)
    assert out.finish_reason in ("length", "stop")
    again = backend.chat([{"role": "user", "content": "find a red one"}], model=str(tmp_path / "tiny"),
                         max_tokens=4, temperature=0.0)
    assert again == out  # greedy: the same answer, from the cached model
    with pytest.raises(A.BackendError, match="local generation failed"):
        backend.chat([{"role": "user", "content": "x"}], model=str(tmp_path / "missing"), max_tokens=2)


# --------------------------------------------------------------------------- several servers


@pytest.fixture
def second_server():
    models = FakeModels()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(models))
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    models.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield models
    finally:
        httpd.shutdown()
        httpd.server_close()


def pool_for(*urls, concurrency=2):
    return A.ServerPool(urls, concurrency=concurrency, api_key="test-key", timeout=1.0, max_attempts=2,
                        backoff_base=0.01, backoff_max=0.05)


def test_server_pool_spreads_requests_and_equals_one_server(server, second_server, corpus, tmp_path):
    root, keys = corpus
    pairs = make_pairs(keys, 20)
    one = run(server, pairs, root, tmp_path / "one.jsonl")
    server.requests.clear()
    pool = pool_for(server.url, second_server.url)
    spread = run(server, pairs, root, tmp_path / "pool.jsonl", backend=pool, concurrency=4)
    assert spread.records == one.records and spread.stats["failed"] == 0
    first, second = Counter(r["stage"] for r in server.requests), Counter(r["stage"] for r in second_server.requests)
    assert first["mllm"] + second["mllm"] == 20 and first["llm"] + second["llm"] == 20  # each asked once
    assert min(pool.stats()["served"]) > 0  # both servers did work


def test_server_pool_skips_a_dead_server_and_resumes(server, corpus, tmp_path):
    root, keys = corpus
    pairs = make_pairs(keys, 12)
    full = run(server, pairs, root, tmp_path / "full.jsonl")
    dead = "http://127.0.0.1:9/v1"  # the discard port: connection refused
    seen = []

    def stop_after_5(entry):
        seen.append(entry)
        if len(seen) == 5:
            raise KeyboardInterrupt

    journal = tmp_path / "j.jsonl"
    with pytest.raises(KeyboardInterrupt):
        run(server, pairs, root, journal, backend=pool_for(dead, server.url), concurrency=4, on_record=stop_after_5)
    pool = pool_for(dead, server.url)
    resumed = run(server, pairs, root, journal, backend=pool, concurrency=4)
    assert resumed.records == full.records and resumed.stats["failed"] == 0
    assert pool.stats()["served"][0] == 0 and pool.stats()["connection_errors"] > 0
    keys_written = [(e["q_img"], e["t_img"]) for e in journal_entries(journal)[1:]]
    assert len(keys_written) == len(set(keys_written)) == 12  # each pair journaled exactly once


def test_server_pool_refuses_bad_arguments():
    with pytest.raises(ValueError, match="at least one base URL"):
        A.ServerPool([])
    with pytest.raises(ValueError, match="concurrency must be a positive int"):
        A.ServerPool(["http://127.0.0.1:9/v1"], concurrency=0)
    with pytest.raises(ValueError, match="base_url must be an http"):
        A.ServerPool(["ftp://x"])
