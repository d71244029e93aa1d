#!/usr/bin/env python3
"""test/server_client.py - kiln-server's end-to-end test (run by test/server.sh).

Python standard library only. Starts kiln-server on 127.0.0.1 with port 0
(a free port it prints), talks HTTP to it, stops it with SIGTERM and checks
that it exits 0 (under ASan/LSan that also means: no leak).

  usage: server_client.py BUILD_BIN_DIR MODEL [SHARED_MODELS_DIR]

Cases (one "ok NAME" / "FAIL NAME: why" line each, then the kt: totals):
  health, models          the endpoints answer
  greedy_concurrent       8 clients at once (stream and not) get kiln-run's greedy text
  returning               a conversation that comes back after its slot was offloaded
                          re-evaluates only its new tokens (usage.cached_tokens, /metrics)
                          and still gives kiln-run's text
  shared_prefix           a new conversation sharing a long beginning with another slot's
                          takes a copy of its KV blocks (kiln_kv_seq_cp), same text
  stop                    stop strings cut the text, finish_reason "stop"
  sleep_wake              the context sleeps after --sleep-idle and the next request
                          wakes it with the same text
  malformed               bad requests get 4xx with {"error":{message,type}}; the
                          server still answers
  fuzz_requests           ~150 mangled bodies (wrong types, truncation, deep nesting,
                          invalid UTF-8, 9 MiB): 200 or 4xx, never a crash
  load_baseline           1000 requests with offloads and 50 sleep cycles: after
                          erasing the slots, /metrics memory is back at its baseline
  disconnect              a client that leaves mid-stream frees its slot
  shutdown                SIGTERM during a stream: the client gets an end, the
                          server exits 0
  chat_template           a ChatML GGUF template is recognised; an unknown one gives
                          400 for chat (completions still work); --chat-template overrides
  kv_budget               --kv-device-budget of 3 blocks for 4 slots: kiln offloads and
                          restores by itself; concurrent clients still get kiln-run's text
  draft_multi_model       with ../shared: --draft gives kiln-run's text and accepts draft
                          tokens; a second -m is chosen by its alias
"""
import http.client
import json
import os
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

BIN, MODEL = sys.argv[1], sys.argv[2]
SHARED = sys.argv[3] if len(sys.argv) > 3 else ""
SERVER = os.path.join(BIN, "kiln-server")
RUN = os.path.join(BIN, "kiln-run")
TMP = tempfile.mkdtemp(prefix="kiln-server-test-")
SANITIZED = bool(os.environ.get("SANITIZE"))

counts = {"pass": 0, "fail": 0, "skip": 0}


def ok(name):
    print("ok   " + name, flush=True)
    counts["pass"] += 1


def bad(name, why):
    print("FAIL %s: %s" % (name, why), flush=True)
    counts["fail"] += 1


def skip(name, why):
    print("skip %s: %s" % (name, why), flush=True)
    counts["skip"] += 1


# KILN_BACKEND=cuda (the GPU machine, test/device/server.sh): every model
# is pinned to device 0 of that backend, and kiln-run uses it too.
BACKEND = os.environ.get("KILN_BACKEND", "")


def pinned(args):
    """-m FILE -> -m FILE@BACKEND:0 (unless already pinned) under KILN_BACKEND."""
    args = list(args)
    for i in range(len(args) - 1):
        if BACKEND and args[i] == "-m" and "@" not in args[i + 1]:
            args[i + 1] += "@%s:0" % BACKEND
    return args


class Server:
    def __init__(self, *args, name="server"):
        self.log = os.path.join(TMP, name + ".log")
        self.errf = open(self.log, "w")
        # --port 0: the kernel picks a free port; the server prints it
        self.proc = subprocess.Popen([SERVER, "--port", "0"] + pinned(args), stdout=subprocess.DEVNULL,
                                     stderr=self.errf)
        self.port = None
        deadline = time.time() + 60
        while time.time() < deadline:
            with open(self.log) as f:
                m = re.search(r"listening on http://[0-9.]+:(\d+)", f.read())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("kiln-server did not start: " + open(self.log).read())

    def connect(self, timeout=120):
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(self, method, path, body=None, conn=None):
        """One request; on a new connection, or on conn (kept alive)."""
        c = conn or self.connect()
        try:
            data = body if isinstance(body, (bytes, str)) or body is None else json.dumps(body)
            c.request(method, path, body=data, headers={"Content-Type": "application/json"})
            r = c.getresponse()
            raw = r.read()
            return r.status, raw
        finally:
            if not conn:
                c.close()

    def json(self, method, path, body=None):
        st, raw = self.request(method, path, body)
        return st, json.loads(raw)

    def stream(self, path, body, conn=None):
        """Returns (status, text, final chunks) of a streamed generation."""
        c = conn or self.connect()
        try:
            c.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                return r.status, r.read().decode(), []
            text, events, done = "", [], False
            for line in r.read().decode().split("\n"):
                if not line.startswith("data: "):
                    continue
                payload = line[6:]
                if payload == "[DONE]":
                    done = True
                    continue
                ev = json.loads(payload)
                events.append(ev)
                for ch in ev.get("choices", []):
                    if "text" in ch:
                        text += ch["text"]
                    elif "delta" in ch:
                        text += ch["delta"].get("content", "") or ""
            if not done:
                raise RuntimeError("stream without [DONE]")
            return 200, text, events
        finally:
            if not conn:
                c.close()

    def metrics(self):
        st, raw = self.request("GET", "/metrics")
        out = {}
        for line in raw.decode().split("\n"):
            if not line or line.startswith("#"):
                continue
            name, value = line.rsplit(" ", 1)
            name = re.sub(r'\{model="[^"]*"\}', "", name)
            out[name] = out.get(name, 0) + float(value)
        return out

    def wait_sleeping(self, want=True, timeout=10, conn=None):
        deadline = time.time() + timeout
        while time.time() < deadline:
            st, raw = self.request("GET", "/health", conn=conn)
            h = json.loads(raw)
            if all(m["sleeping"] == want for m in h["models"]):
                return True
            time.sleep(0.01)
        return False

    def stop(self, timeout=30):
        """SIGTERM; returns (exit status, log text)."""
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            rc = "hung"
        self.errf.close()
        return rc, open(self.log).read()


def kiln_run(model, prompt, n):
    out = subprocess.run([RUN, "-m", model, "-p", prompt, "-n", str(n), "--temp", "0", "-t", "1"] +
                         (["--backend", BACKEND] if BACKEND else []),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, check=True).stdout.decode()
    assert out.startswith(prompt) and out.endswith("\n"), out
    return out[len(prompt):-1]


def check_stop(name, srv):
    rc, log = srv.stop()
    if rc == 0 and "ERROR: " not in log and "runtime error" not in log:
        ok(name)
    else:
        bad(name, "exit %s: %s" % (rc, log[-3000:]))


PROMPTS = ["In the beginning", "And the LORD said unto Moses", "A fool and his money", "The king of Egypt"]
N_GEN = 20


def completion(srv, prompt, n, stream=False, **kw):
    body = dict(prompt=prompt, max_tokens=n, temperature=0, **kw)
    if stream:
        st, text, events = srv.stream("/v1/completions", dict(body, stream=True))
        return st, text, events
    st, j = srv.json("POST", "/v1/completions", body)
    return st, (j["choices"][0]["text"] if st == 200 else j), j


def main():
    expected = {p: kiln_run(MODEL, p, N_GEN) for p in PROMPTS}
    threads = "1"
    srv = Server("-m", MODEL, "--slots", "4", "-c", "1024", "-t", threads, "--offload-idle", "0",
                 "--sleep-idle", "0.05", name="main")

    # health, models
    st, h = srv.json("GET", "/health")
    (ok if st == 200 and h["status"] == "ok" else bad)("health", *([] if st == 200 else [h]))
    st, m = srv.json("GET", "/v1/models")
    name = os.path.basename(MODEL)
    if st == 200 and m["data"][0]["id"] == name and m["data"][0]["meta"]["slots"] == 4:
        ok("models")
    else:
        bad("models", m)

    # greedy_concurrent: 8 clients at once, half streaming
    results = [None] * 8

    def client(i):
        try:
            results[i] = completion(srv, PROMPTS[i % 4], N_GEN, stream=bool(i % 2))
        except Exception as ex:  # noqa: BLE001 - reported below
            results[i] = (0, repr(ex), None)

    ts = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    errs = ["client %d: %r != %r" % (i, r[1], expected[PROMPTS[i % 4]])
            for i, r in enumerate(results) if r[0] != 200 or r[1] != expected[PROMPTS[i % 4]]]
    (bad("greedy_concurrent", "; ".join(errs)) if errs else ok("greedy_concurrent"))

    # returning: the conversation comes back (its slot was offloaded at once)
    before = srv.metrics()
    p1 = PROMPTS[0]
    st, t1, j1 = completion(srv, p1, N_GEN)
    p2 = p1 + t1 + "\nAnd"
    st2, t2, j2 = completion(srv, p2, 12)
    after = srv.metrics()
    exp2 = kiln_run(MODEL, p2, 12)
    cached = j2["usage"]["prompt_tokens_details"]["cached_tokens"] if st2 == 200 else -1
    n_p2 = j2["usage"]["prompt_tokens"] if st2 == 200 else -1
    evaluated = after["kiln_prompt_tokens_evaluated_total"] - before["kiln_prompt_tokens_evaluated_total"]
    restores = after["kiln_restores_total"] - before["kiln_restores_total"]
    if (st2 == 200 and t2 == exp2 and cached >= 20 and n_p2 - cached <= 6 and restores >= 1
            and after["kiln_offloads_total"] > before["kiln_offloads_total"]):
        ok("returning (%d of %d prompt tokens cached, %d evaluated in 2 requests)" % (cached, n_p2, evaluated))
    else:
        bad("returning", "st %s text %r vs %r cached %s of %s restores %s" % (st2, t2, exp2, cached, n_p2, restores))

    # shared_prefix: a new conversation that shares a long beginning with
    # another slot's takes a copy of those KV blocks (its slot was offloaded)
    system = ("The words of the Preacher, the son of David, king in Jerusalem. Vanity of vanities, saith the "
              "Preacher, vanity of vanities; all is vanity.")
    before = srv.metrics()
    st1, _, j1 = completion(srv, system + " What profit hath a man", 48)
    py = system + " One generation passeth away, and another"
    st2, t2, j2 = completion(srv, py, N_GEN)
    after = srv.metrics()
    cached = j2["usage"]["prompt_tokens_details"]["cached_tokens"] if st2 == 200 else -1
    copies = after["kiln_prefix_copies_total"] - before["kiln_prefix_copies_total"]
    if st1 == 200 and st2 == 200 and t2 == kiln_run(MODEL, py, N_GEN) and cached >= 16 and copies == 1:
        ok("shared_prefix (%d of %d prompt tokens from another slot)" % (cached, j2["usage"]["prompt_tokens"]))
    else:
        bad("shared_prefix", "st %s %s cached %s copies %s %r" % (st1, st2, cached, copies, t2))

    # stop strings
    exp = expected[PROMPTS[0]]
    stop = " the"
    st, t, j = completion(srv, PROMPTS[0], N_GEN, stop=[stop, "zzzz"])
    cut = exp.find(stop)
    want = exp[:cut] if cut >= 0 else exp
    st_s, t_s, ev = completion(srv, PROMPTS[0], N_GEN, stream=True, stop=stop)
    if st == 200 and t == want and (cut < 0 or j["choices"][0]["finish_reason"] == "stop") and t_s == want:
        ok("stop")
    else:
        bad("stop", "%r / %r vs %r" % (t, t_s, want))

    # sleep_wake: the context sleeps, the next request wakes it, same text
    m0 = srv.metrics()
    slept = srv.wait_sleeping(True)
    st, t, j = completion(srv, PROMPTS[1], N_GEN)
    m1 = srv.metrics()
    if slept and st == 200 and t == expected[PROMPTS[1]] and m1["kiln_resumes_total"] > m0["kiln_resumes_total"]:
        ok("sleep_wake")
    else:
        bad("sleep_wake", "slept %s st %s %r" % (slept, st, t))

    # malformed requests
    long_prompt = "word " * 2000
    cases = [
        ("POST", "/v1/completions", "{bad json", 400),
        ("POST", "/v1/completions", "", 400),
        ("POST", "/v1/completions", "[1, 2]", 400),
        ("POST", "/v1/completions", {"max_tokens": 3}, 400),
        ("POST", "/v1/completions", {"prompt": 5}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "max_tokens": -1}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "max_tokens": "ten"}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "max_tokens": 2.5}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "n": -1}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "n": 2}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "model": "no-such-model"}, 404),
        ("POST", "/v1/completions", {"prompt": "x", "model": 7}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "temperature": "hot"}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "temperature": -1}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "top_p": 0}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "stop": [1]}, 400),
        ("POST", "/v1/completions", {"prompt": "x", "stream": "yes"}, 400),
        ("POST", "/v1/completions", {"prompt": [99999999]}, 400),
        ("POST", "/v1/completions", {"prompt": long_prompt}, 400),
        ("POST", "/v1/chat/completions", {"messages": "hi"}, 400),
        ("POST", "/v1/chat/completions", {"messages": []}, 400),
        ("POST", "/v1/chat/completions", {"messages": [{"role": 1, "content": "x"}]}, 400),
        ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": 3}]}, 400),
        ("POST", "/v1/chat/completions", {"messages": [{"role": "user", "content": long_prompt}]}, 400),
        ("GET", "/v1/completions", None, 405),
        ("POST", "/health", "{}", 405),
        ("GET", "/no/such/endpoint", None, 404),
    ]
    errs = []
    for method, path, body, want in cases:
        try:
            st, raw = srv.request(method, path, body)
            j = json.loads(raw)
            if st != want or not j["error"]["message"] or not j["error"]["type"]:
                errs.append("%s %s %.60r: %s %s" % (method, path, body, st, raw[:200]))
        except Exception as ex:  # noqa: BLE001
            errs.append("%s %s %.60r: %r" % (method, path, body, ex))
    st, h = srv.json("GET", "/health")
    st2, t, j = completion(srv, PROMPTS[2], N_GEN)
    if not errs and st == 200 and st2 == 200 and t == expected[PROMPTS[2]]:
        ok("malformed (%d bad requests)" % len(cases))
    else:
        bad("malformed", "; ".join(errs) + " health %s" % st)

    # fuzz_requests: random and mangled bodies never crash the server
    rng = random.Random(7)
    valid = json.dumps({"prompt": "In the beginning", "max_tokens": 2, "temperature": 0.5, "stop": ["x"],
                        "stream": False, "seed": 3, "top_k": 5, "top_p": 0.9})
    chat_valid = json.dumps({"messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                             "max_tokens": 2})
    weird = [None, True, -1, 0, 1e308, -1e308, 2 ** 70, "", "\u0000x", [], {}, [1, "a"], {"a": []}, "\ud800"]
    keys = ["prompt", "messages", "max_tokens", "temperature", "top_p", "top_k", "min_p", "seed", "stop",
            "stream", "stream_options", "model", "n", "repeat_penalty", "frequency_penalty"]
    bodies = [b"\x00\xff" * 10, b"{" * 5000 + b"}" * 5000, b"[" * 2000, b'{"prompt": "' + b"\xc3" * 50 + b'"}',
              b'{"prompt":"a\\u0000b","max_tokens":1}', b"x" * (9 << 20)]
    for i in range(150):
        base = json.loads(valid if i % 3 else chat_valid)
        for _ in range(rng.randint(1, 3)):
            base[rng.choice(keys)] = rng.choice(weird)
        text = json.dumps(base)
        if i % 5 == 0:
            text = text[:rng.randint(0, len(text))]
        bodies.append(text.encode())
    errs = []
    codes = {}
    for i, b in enumerate(bodies):
        path = "/v1/chat/completions" if i % 2 else "/v1/completions"
        try:
            st, raw = srv.request("POST", path, b)
            codes[st] = codes.get(st, 0) + 1
            if st not in (200, 400, 404, 413) or (st != 200 and "error" not in json.loads(raw)):
                errs.append("%d: %s %r" % (i, st, raw[:200]))
        except Exception as ex:  # noqa: BLE001
            errs.append("%d: %r" % (i, ex))
    st, h = srv.json("GET", "/health")
    if not errs and st == 200:
        ok("fuzz_requests (%d bodies: %s)" % (len(bodies), ", ".join("%s x%d" % kv for kv in sorted(codes.items()))))
    else:
        bad("fuzz_requests", "; ".join(errs[:5]))

    # load_baseline: 1000 requests with offloads, 50 sleep cycles
    n_req = 1000
    srv.request("POST", "/slots/erase")
    time.sleep(0.3)  # connections that just closed finish their cleanup
    base = srv.metrics()
    convs = ["%s %d" % (PROMPTS[i % 4], i) for i in range(8)]
    failures = []
    t0 = time.time()

    def loader(k):
        conn = srv.connect()  # kept alive: one server thread per client
        for i in range(k, n_req, 4):
            try:
                body = dict(prompt=convs[i % 8], max_tokens=2 + i % 3, temperature=0 if i % 2 else 0.7,
                            seed=i, stream=bool(i % 5 == 0))
                if body["stream"]:
                    st, _, _ = srv.stream("/v1/completions", body, conn)
                else:
                    st, _ = srv.request("POST", "/v1/completions", body, conn)
                if st != 200:
                    failures.append(st)
            except Exception as ex:  # noqa: BLE001
                failures.append(repr(ex))
                conn.close()
                conn = srv.connect()
        conn.close()

    ts = [threading.Thread(target=loader, args=(k,)) for k in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    t_load = time.time() - t0
    sleeps_before = srv.metrics()["kiln_suspends_total"]
    t0 = time.time()
    slept = 0
    conn = srv.connect()
    for i in range(50):
        if srv.wait_sleeping(True, conn=conn):
            slept += 1
        st, _ = srv.request("POST", "/v1/completions", dict(prompt=convs[i % 8], max_tokens=2, temperature=0), conn)
        if st != 200:
            failures.append(st)
    t_sleep = time.time() - t0
    conn.close()
    srv.request("POST", "/slots/erase")
    keys = ["kiln_server_alloc_bytes", "kiln_server_alloc_blocks", "kiln_kv_blocks_device", "kiln_kv_bytes_host",
            "kiln_kv_sequences_offloaded", "kiln_pool_bytes_in_use", "kiln_pool_bytes_cached", "kiln_slots_busy"]
    deadline = time.time() + 5  # a connection closing may still hold its request state for a moment
    while True:
        final = srv.metrics()
        diffs = ["%s %g -> %g" % (k, base[k], final[k]) for k in keys if base[k] != final[k]]
        heap_growth = final["kiln_process_heap_bytes"] - base["kiln_process_heap_bytes"]
        if (not diffs and heap_growth <= 256 * 1024) or time.time() > deadline:
            break
        time.sleep(0.1)
    n_sleeps = final["kiln_suspends_total"] - sleeps_before
    n_off = final["kiln_offloads_total"] - base["kiln_offloads_total"]
    if heap_growth > 256 * 1024:
        diffs.append("process heap grew by %d bytes" % heap_growth)
    if not failures and not diffs and slept == 50 and n_sleeps >= 50 and n_off >= n_req:
        ok("load_baseline (%d requests in %.1f s, %d offloads, %d sleep cycles in %.1f s, heap %+d bytes)"
           % (n_req, t_load, n_off, n_sleeps, t_sleep, heap_growth))
    else:
        bad("load_baseline", "failures %s, diffs %s, slept %d, suspends %d, offloads %d"
            % (failures[:5], diffs, slept, n_sleeps, n_off))

    # disconnect: a client that leaves mid-stream frees its slot
    g0 = srv.metrics()["kiln_generated_tokens_total"]
    c = srv.connect()
    c.request("POST", "/v1/completions", body=json.dumps(dict(prompt=PROMPTS[3], max_tokens=240, temperature=0.9,
                                                              min_p=0, stream=True)))
    r = c.getresponse()
    stream_status = r.status
    first = r.read(64)
    r.close()
    c.close()
    deadline = time.time() + 10
    idle = False
    while time.time() < deadline and not idle:
        st, slots = srv.json("GET", "/slots")
        idle = all(x["state"] == "idle" for x in slots)
        time.sleep(0.02)
    st, t, j = completion(srv, PROMPTS[2], N_GEN)
    n_left = srv.metrics()["kiln_generated_tokens_total"] - g0
    if stream_status == 200 and first.startswith(b"data: ") and idle and st == 200 and t == expected[PROMPTS[2]]:
        ok("disconnect (%d tokens generated for the stream that was left)" % (n_left - N_GEN))
    else:
        bad("disconnect", "stream %s %r idle %s st %s %r" % (stream_status, first, idle, st, t))

    # shutdown during a stream
    result = {}

    def long_stream():
        try:
            result["r"] = srv.stream("/v1/completions", dict(prompt=PROMPTS[3], max_tokens=200, temperature=0.9,
                                                             stream=True))
        except Exception as ex:  # noqa: BLE001
            result["r"] = ("closed", repr(ex), [])

    t = threading.Thread(target=long_stream)
    t.start()
    time.sleep(0.2)
    check_stop("shutdown", srv)
    t.join(30)
    if t.is_alive():
        bad("shutdown_client", "the streaming client still waits")

    chat_template_cases()
    kv_budget(expected)
    draft_multi_model()


def kv_budget(expected):
    """--kv-device-budget of 3 blocks for 4 slots: kiln offloads idle slots by
    itself, restores them when they return, and 4 clients at once still get
    kiln-run's text."""
    probe = Server("-m", MODEL, "--slots", "1", "-c", "256", "-t", "1", name="probe")
    block = int(probe.metrics()["kiln_kv_block_bytes"])
    probe.stop()
    srv = Server("-m", MODEL, "--slots", "4", "-c", "1024", "-t", "1", "--kv-device-budget", str(3 * block),
                 name="budget")
    errs = []
    try:
        for p in PROMPTS + [PROMPTS[0]]:
            st, t, j = completion(srv, p, N_GEN)
            if st != 200 or t != expected[p]:
                errs.append("%r: %s %r" % (p, st, t))
        if j["usage"]["prompt_tokens_details"]["cached_tokens"] < 3:
            errs.append("the returning prompt was not cached: %s" % j["usage"])
        results = {}

        def client(i):
            results[i] = completion(srv, PROMPTS[i] + " and", N_GEN)

        ts = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        for i in range(4):
            want = expected_cache(PROMPTS[i] + " and")
            if results[i][0] != 200 or results[i][1] != want:
                errs.append("concurrent %d: %s %r != %r" % (i, results[i][0], results[i][1], want))
        m = srv.metrics()
        if not (m["kiln_kv_auto_offloads_total"] > 0 and m["kiln_kv_auto_restores_total"] > 0):
            errs.append("auto offloads %g restores %g" % (m["kiln_kv_auto_offloads_total"],
                                                        m["kiln_kv_auto_restores_total"]))
        if m["kiln_kv_blocks_device"] > 3:
            errs.append("%g device blocks held" % m["kiln_kv_blocks_device"])
    finally:
        rc, log = srv.stop()
        if rc != 0:
            errs.append("exit %s: %s" % (rc, log[-2000:]))
    (bad("kv_budget", "; ".join(errs)) if errs else
     ok("kv_budget (%d auto offloads, %d restores)" % (m["kiln_kv_auto_offloads_total"],
                                                      m["kiln_kv_auto_restores_total"])))


def gguf_with_template(src, dst, template):
    """Copies a GGUF file adding tokenizer.chat_template (the data section is
    re-aligned; tensor offsets are relative to it, so they stay valid)."""
    with open(src, "rb") as f:
        data = f.read()
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    assert magic == b"GGUF"
    pos = 24
    scalar = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
    alignment = 32

    def read_str(p):
        n, = struct.unpack_from("<Q", data, p)
        return data[p + 8:p + 8 + n], p + 8 + n

    def skip_value(p, t):
        if t in scalar:
            return p + scalar[t]
        if t == 8:
            return read_str(p)[1]
        assert t == 9
        et, n = struct.unpack_from("<IQ", data, p)
        p += 12
        for _ in range(n):
            p = skip_value(p, et)
        return p

    for _ in range(n_kv):
        key, pos = read_str(pos)
        t, = struct.unpack_from("<I", data, pos)
        vstart = pos + 4
        pos = skip_value(vstart, t)
        if key == b"general.alignment":
            alignment, = struct.unpack_from("<I", data, vstart)
    kv_end = pos
    for _ in range(n_tensors):
        _, pos = read_str(pos)
        nd, = struct.unpack_from("<I", data, pos)
        pos += 4 + 8 * nd + 4 + 8
    infos_end = pos
    data_start = (infos_end + alignment - 1) // alignment * alignment
    key = b"tokenizer.chat_template"
    val = template.encode()
    kv = struct.pack("<Q", len(key)) + key + struct.pack("<IQ", 8, len(val)) + val
    head = struct.pack("<4sIQQ", magic, version, n_tensors, n_kv + 1) + data[24:kv_end] + kv + data[kv_end:infos_end]
    head += b"\0" * ((-len(head)) % alignment)
    with open(dst, "wb") as f:
        f.write(head)
        f.write(data[data_start:])


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
UNKNOWN = "{% for m in messages %}<<{{ m['role'] }}>> {{ m['content'] }}{% endfor %}"


def chat_template_cases():
    chatml = os.path.join(TMP, "chatml.gguf")
    unknown = os.path.join(TMP, "unknown.gguf")
    gguf_with_template(MODEL, chatml, CHATML)
    gguf_with_template(MODEL, unknown, UNKNOWN)
    msgs = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}],
            "max_tokens": 8, "temperature": 0}
    errs = []
    srv = Server("-m", chatml, "-m", unknown, "--slots", "2", "-c", "512", "-t", "1", name="chat")
    try:
        st, m = srv.json("GET", "/v1/models")
        kinds = {d["id"]: d["meta"]["chat_template"] for d in m["data"]}
        if kinds != {"chatml.gguf": "chatml", "unknown.gguf": "unknown"}:
            errs.append("templates %s" % kinds)
        st, j = srv.json("POST", "/v1/chat/completions", dict(msgs, model="chatml"))
        # the rendered prompt: BOS + ChatML text, the specials parsed as tokens
        if st != 200 or j["object"] != "chat.completion" or j["choices"][0]["message"]["role"] != "assistant":
            errs.append("chatml chat: %s %s" % (st, j))
        st, j = srv.json("POST", "/v1/chat/completions", dict(msgs, model="unknown.gguf"))
        if st != 400 or "--chat-template" not in j["error"]["message"]:
            errs.append("unknown template chat: %s %s" % (st, j))
        st, t, j = completion(srv, PROMPTS[0], N_GEN, model="unknown.gguf")
        if st != 200 or t != expected_cache(PROMPTS[0]):
            errs.append("unknown template completion: %s %r" % (st, t))
    finally:
        rc, log = srv.stop()
        if rc != 0:
            errs.append("exit %s: %s" % (rc, log[-2000:]))
    srv = Server("-m", unknown, "--chat-template", "llama3", "--slots", "1", "-c", "256", "-t", "1", name="chat2")
    try:
        st, j = srv.json("POST", "/v1/chat/completions", msgs)
        if st != 200:
            errs.append("--chat-template llama3: %s %s" % (st, j))
    finally:
        rc, log = srv.stop()
        if rc != 0:
            errs.append("exit %s: %s" % (rc, log[-2000:]))
    (bad("chat_template", "; ".join(errs)) if errs else ok("chat_template"))


_expected = {}


def expected_cache(prompt, model=None):
    key = (model or MODEL, prompt)
    if key not in _expected:
        _expected[key] = kiln_run(model or MODEL, prompt, N_GEN)
    return _expected[key]


def draft_multi_model():
    target = os.path.join(SHARED, "tiny-target-f16.gguf")
    draft = os.path.join(SHARED, "tiny-draft-f16.gguf")
    if not (SHARED and os.path.exists(target) and os.path.exists(draft)):
        skip("draft_multi_model", "../shared models not found")
        return
    srv = Server("-m", target + ("" if BACKEND else "@cpu:0"), "--draft", draft, "-m", MODEL, "--alias", "small", "--slots", "2",
                 "-c", "1024", "-t", "1", "--sleep-idle", "0.1", "--sleep-level", "2", name="draft")
    errs = []
    try:
        results = {}

        def client(i, model, prompt):
            results[i] = completion(srv, prompt, N_GEN, stream=bool(i % 2), model=model)

        jobs = [(0, "tiny-target-f16", PROMPTS[0]), (1, "tiny-target-f16.gguf", PROMPTS[1]),
                (2, "small", PROMPTS[2]), (3, None, PROMPTS[3])]
        for rnd in range(2):
            if rnd == 1 and not srv.wait_sleeping(True):  # --sleep-level 2: the draft sleeps too
                errs.append("did not fall asleep")
            ts = [threading.Thread(target=client, args=j) for j in jobs]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
            for i, model, prompt in jobs:
                want = expected_cache(prompt, MODEL if model == "small" else target)
                if results[i][0] != 200 or results[i][1] != want:
                    errs.append("round %d %s %r: %r != %r" % (rnd, model, prompt, results[i][1], want))
        m = srv.metrics()
        if not m["kiln_draft_accepted_total"] > 0:
            errs.append("no draft token accepted")
        if not m["kiln_suspends_total"] >= 2 or not m["kiln_resumes_total"] >= 2:
            errs.append("suspends %g resumes %g" % (m["kiln_suspends_total"], m["kiln_resumes_total"]))
    finally:
        rc, log = srv.stop()
        if rc != 0:
            errs.append("exit %s: %s" % (rc, log[-2000:]))
    (bad("draft_multi_model", "; ".join(errs)) if errs else ok("draft_multi_model"))


if __name__ == "__main__":
    try:
        main()
    except Exception as ex:  # noqa: BLE001 - a crash of the test is a failure
        import traceback
        traceback.print_exc()
        bad("harness", repr(ex))
    finally:
        shutil.rmtree(TMP, ignore_errors=True)
    print("kt: %d passed, %d failed, %d skipped" % (counts["pass"], counts["fail"], counts["skip"]))
    sys.exit(1 if counts["fail"] else 0)
