#!/usr/bin/env python3
"""One drill of `scripts/cluster drill`, against a cluster that scripts/cluster started
for it (run directory $RUN; scripts/cluster exports RUN, BIN, DBURL, REDIS, NS, BASE,
MAILDIR, API_COUNT, WORKER_COUNT, STATS_URL, ROOT and CL_LIB).

usage: drill.py NAME [--phase limited|off]

It seeds the clients it needs (`mithril seed`), drives the load (aiohttp, open loop: each
request leaves at its scheduled time whether or not earlier ones answered), acts on the
cluster at set moments (`scripts/cluster restart-api`, kill -9 of a recorded process, a
restart of the drill's own Redis), then reads the database, the SMTP sink's mail and
HAProxy's log, prints the figures and checks, writes RUN/drill-result.json, and exits 1
when a check failed.

How a notice is matched to its rotation: each refresh sends its own x-request-id, which
the audit event (connection_events) records; the event's id is the notice's Message-ID
(<event_id@mithril>). Commit time is the event's occurred_at; acceptance time is the
modification time of the sink's .eml file, written when the DATA ended, just before the
sink answers 250.
"""
import argparse
import asyncio
import email.parser
import email.policy
import hashlib
import json
import os
import re
import secrets as pysecrets
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import aiohttp
import psycopg

ENV = os.environ
NAME = "drill"


def say(*parts):
    now = time.time()
    print(f"drill {NAME}: {time.strftime('%H:%M:%S', time.localtime(now))}.{int(now % 1 * 1000):03d}", *parts, flush=True)


def seconds(value, default):
    """'15s', '500ms', '2m' or a bare number of seconds -> float seconds."""
    v = (value or "").strip() or default
    if v.endswith("ms"):
        return float(v[:-2]) / 1000
    if v.endswith("s"):
        return float(v[:-1])
    if v.endswith("m"):
        return float(v[:-1]) * 60
    if v.endswith("h"):
        return float(v[:-1]) * 3600
    return float(v)


def pct(values, q):
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


def ms(v):
    return f"{v * 1000:.0f} ms"


# --- the cluster ------------------------------------------------------------------------


class Cluster:
    def __init__(self):
        self.run = ENV["RUN"]
        self.bin = ENV["BIN"]
        self.dburl = ENV["DBURL"]
        self.redis = ENV["REDIS"]
        self.ns = ENV["NS"]
        self.base = ENV["BASE"]
        self.maildir = ENV["MAILDIR"]
        self.root = ENV["ROOT"]
        self.lib = ENV["CL_LIB"]
        self.api_count = int(ENV["API_COUNT"])
        self.worker_count = int(ENV["WORKER_COUNT"])
        self.ports = [
            int(open(f"{self.run}/proc/api-{i}.port").read()) for i in range(1, self.api_count + 1)
        ]
        self.db = None
        self.sql("SELECT 1")

    def api(self, i):
        """Base URL of API instance i (0-based), bypassing HAProxy."""
        return f"http://127.0.0.1:{self.ports[i]}"

    def sql(self, query):
        """Rows of QUERY as lists of strings, over one connection opened when the drill
        starts: under load the cluster's pools (3 x 20 + 3 x 10) leave a PostgreSQL with
        max_connections = 100 little room for a new one."""
        if self.db is None:
            self.db = psycopg.connect(self.dburl, autocommit=True)
        with self.db.cursor() as cur:
            cur.execute(query)
            return [["" if v is None else str(v) for v in row] for row in cur.fetchall()]

    def redis_cli(self, *args, url=None):
        out = subprocess.run(
            ["redis-cli", "-u", url or self.redis, *args], capture_output=True, text=True
        )
        return out.stdout.strip()

    def _proc(self, name, what):
        try:
            with open(f"{self.run}/proc/{name}.{what}") as f:
                return f.read().strip()
        except OSError:
            return ""

    @staticmethod
    def _starttime(pid):
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[19]
        except (OSError, IndexError):
            return ""

    def alive(self, name):
        pid = self._proc(name, "pid")
        return bool(pid) and self._starttime(pid) == self._proc(name, "start")

    def kill(self, name, sig=signal.SIGKILL):
        """Signals the process recorded as NAME, only if it is still that process."""
        pid = self._proc(name, "pid")
        if pid and self.alive(name):
            os.kill(int(pid), sig)
            return int(pid)
        raise RuntimeError(f"{name} is not running")

    async def cluster_cmd(self, *args):
        """Runs `scripts/cluster ARGS --run RUN`, echoing its lines indented; its exit code."""
        proc = await asyncio.create_subprocess_exec(
            f"{self.root}/scripts/cluster", *args, "--run", self.run,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        lines = []
        async for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            lines.append(line)
            print("    " + line, flush=True)
        return await proc.wait(), lines

    def log_lines(self, pattern, prefix="api-"):
        """Lines matching PATTERN in the logs of the processes whose names start with PREFIX."""
        n = 0
        rx = re.compile(pattern)
        d = f"{self.run}/logs"
        for name in os.listdir(d):
            if name.startswith(prefix):
                with open(os.path.join(d, name), errors="replace") as f:
                    n += sum(1 for line in f if rx.search(line))
        return n


# --- seed data --------------------------------------------------------------------------


@dataclass
class Conn:
    id: str
    secret: str


@dataclass
class Client:
    id: str
    token: str
    refresh: list = field(default_factory=list)  # Conn, refreshed by the drill
    verify: list = field(default_factory=list)  # Conn, only verified (their secrets stay)


def seed(cl, clients, refresh_per_client=1, verify_per_client=0):
    """Seeds CLIENTS clinics (type MSP), each with its owner, its token, and connections to
    refresh_per_client + verify_per_client MIS consumers, every secret known."""
    stamp = os.path.basename(cl.run)
    consumers = [str(uuid.uuid4()) for _ in range(refresh_per_client + verify_per_client)]
    mis_owner = str(uuid.uuid4())
    users = [{"id": mis_owner, "email": "mis@drill.example.org", "locale": "en"}]
    rows = [
        {"id": c, "name": f"Drill MIS {k} {stamp}", "client_type": "MIS", "user_id": mis_owner}
        for k, c in enumerate(consumers)
    ]
    conns, tokens, out = [], [], []
    expires = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 30 * 86400))
    for n in range(clients):
        owner, cid = str(uuid.uuid4()), str(uuid.uuid4())
        client = Client(cid, pysecrets.token_urlsafe(32))
        users.append({"id": owner, "email": f"owner-{n}@drill.example.org", "locale": "en"})
        rows.append({"id": cid, "name": f"Drill clinic {n} {stamp}", "client_type": "MSP", "user_id": owner})
        tokens.append({
            "value": client.token, "user_id": owner, "client_id": cid,
            "scope": "connection:refresh_secret connection:read", "expires_at": expires,
        })
        for k, consumer in enumerate(consumers):
            conn = Conn(str(uuid.uuid4()), pysecrets.token_urlsafe(32))
            conns.append({
                "id": conn.id, "client_id": cid, "consumer_id": consumer,
                "redirect_uri": "https://mis.example.org/cb", "secret": conn.secret,
            })
            (client.refresh if k < refresh_per_client else client.verify).append(conn)
        out.append(client)
    path = f"{cl.run}/drill-seed.json"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"users": users, "clients": rows, "connections": conns, "tokens": tokens}, f)
    t0 = time.time()
    subprocess.run(
        [cl.bin, "seed", path],
        env={**ENV, "DATABASE_URL": cl.dburl, "RUST_LOG": "warn"},
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, check=True,
    )
    say(f"seeded {clients} clients x ({refresh_per_client} refreshed + {verify_per_client} "
        f"verify-only) connections in {time.time() - t0:.1f}s")
    return out


# --- HTTP -------------------------------------------------------------------------------


@dataclass
class Rec:
    kind: str
    t0: float
    t1: float = 0.0
    status: int = 0  # 0: no HTTP answer (error says why)
    error: str = ""
    backend: str = ""
    rid: str = ""
    conn: str = ""
    secret: str = ""
    target: str = ""

    def outcome(self):
        return str(self.status) if self.status else (self.error.split(":")[0] or "no answer")


def session(limit=256):
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=limit, limit_per_host=limit, force_close=False),
        timeout=aiohttp.ClientTimeout(total=75),
    )


async def refresh(http, base, client, conn, grace=None, rid=None):
    rid = rid or f"drill-{NAME}-{uuid.uuid4().hex}"
    rec = Rec("refresh", time.time(), rid=rid, conn=conn.id, target=base)
    url = f"{base}/api/clients/{client.id}/connections/{conn.id}/actions/refresh_secret"
    headers = {"Authorization": f"Bearer {client.token}", "x-request-id": rid}
    kw = {"json": {"grace_period": grace}} if grace is not None else {}
    try:
        async with http.patch(url, headers=headers, **kw) as resp:
            body = await resp.read()
            rec.status = resp.status
            rec.backend = resp.headers.get("x-cluster-backend", "")
            if resp.status == 200:
                rec.secret = json.loads(body)["data"]["secret"]
            elif resp.status == 429:
                rec.error = f"retry-after {resp.headers.get('retry-after', '?')}"
    except Exception as e:  # noqa: BLE001 - every failure is a figure
        rec.error = f"{type(e).__name__}: {str(e)[:120]}"
    rec.t1 = time.time()
    return rec


async def verify(http, base, secret):
    rec = Rec("verify", time.time(), target=base)
    try:
        async with http.post(f"{base}/api/connections/actions/verify", headers={"api-key": secret}) as resp:
            await resp.read()
            rec.status = resp.status
            rec.backend = resp.headers.get("x-cluster-backend", "")
    except Exception as e:  # noqa: BLE001
        rec.error = f"{type(e).__name__}: {str(e)[:120]}"
    rec.t1 = time.time()
    return rec


class Load:
    """Open-loop load through the balancer: refreshes round-robin over the clients' refreshed
    connections, verifies round-robin over their verify-only connections."""

    def __init__(self, cl, clients, refresh_rate, verify_rate):
        self.cl, self.clients = cl, clients
        self.refresh_rate, self.verify_rate = refresh_rate, verify_rate
        self.targets = [(c, conn) for c in clients for conn in c.refresh]
        # Interleave clients, so consecutive refreshes hit different clients.
        self.targets.sort(key=lambda t: (t[0].refresh.index(t[1]), clients.index(t[0])))
        self.secrets = [conn.secret for c in clients for conn in c.verify]
        self.recs = []
        self.stop = asyncio.Event()
        self.started = self.stopped = 0.0

    def spread(self):
        per_client = self.refresh_rate / len(self.clients)
        return (
            f"refreshes round-robin over {len(self.targets)} connections of {len(self.clients)} clients "
            f"({per_client:.2f}/s per client against a budget of {ENV.get('MITHRIL_REFRESH_LIMIT') or '60/min, burst 60'}); "
            f"verifies round-robin over {len(self.secrets)} other connections whose secrets stay"
        )

    async def _paced(self, rate, fire, tasks):
        loop = asyncio.get_running_loop()
        t0, i = loop.time(), 0
        while not self.stop.is_set():
            due = int((loop.time() - t0) * rate) + 1
            while i < due:
                tasks.append(asyncio.create_task(fire(i)))
                i += 1
            await asyncio.sleep(max(0.0, t0 + i / rate - loop.time()))

    async def run(self):
        tasks = []
        async with session() as http:
            base = self.cl.base

            async def fire_refresh(i):
                client, conn = self.targets[i % len(self.targets)]
                self.recs.append(await refresh(http, base, client, conn))

            async def fire_verify(i):
                self.recs.append(await verify(http, base, self.secrets[i % len(self.secrets)]))

            self.started = time.time()
            streams = [self._paced(self.refresh_rate, fire_refresh, tasks)]
            if self.verify_rate:
                streams.append(self._paced(self.verify_rate, fire_verify, tasks))
            await asyncio.gather(*streams)
            self.stopped = time.time()
            await asyncio.gather(*tasks)
        return self.recs

    def describe(self):
        d = self.stopped - self.started
        n_r = sum(1 for r in self.recs if r.kind == "refresh")
        n_v = len(self.recs) - n_r
        return (
            f"{self.refresh_rate:g} refreshes/s + {self.verify_rate:g} verifies/s through HAProxy for {d:.1f}s "
            f"(sent {n_r / d:.1f}/s and {n_v / d:.1f}/s)"
        )


# --- reading the results ----------------------------------------------------------------


class Mailbox:
    """The sink's notices: Message-ID and acceptance time of each .eml file."""

    def __init__(self, maildir):
        self.dir = maildir
        self.seen = {}
        self.parser = email.parser.BytesHeaderParser(policy=email.policy.default)

    def scan(self):
        for name in os.listdir(self.dir):
            if name in self.seen or not re.fullmatch(r"\d+\.eml", name):
                continue
            path = os.path.join(self.dir, name)
            accepted = os.stat(path).st_mtime_ns / 1e9
            with open(path, "rb") as f:
                mid = str(self.parser.parse(f).get("message-id", "")).strip()
            self.seen[name] = (mid, accepted)
        by = {}
        for mid, t in self.seen.values():
            by.setdefault(mid, []).append(t)
        return by


@dataclass
class Event:
    id: str
    conn: str
    rid: str
    version: int
    at: float


def events(cl):
    return [
        Event(r[0], r[1], r[2], int(r[3]), float(r[4]))
        for r in cl.sql(
            "SELECT id, connection_id, request_id, secret_version, extract(epoch FROM occurred_at) "
            "FROM connection_events WHERE kind = 'secret_refreshed'"
        )
    ]


def notice_states(cl):
    return dict((r[0], int(r[1])) for r in cl.sql("SELECT state, count(*) FROM sent_notifications GROUP BY state"))


async def wait_notices(cl, mailbox, evs, limit):
    """Until every event in EVS has a notice and no notice is mid-send (a `sending` claim
    could still lapse and send again), or LIMIT seconds. Returns the seconds waited."""
    t0 = time.time()
    want = {f"<{e.id}@mithril>" for e in evs}
    while True:
        by = mailbox.scan()
        done = want.issubset(by.keys()) and notice_states(cl).get("sending", 0) == 0
        if done or time.time() - t0 > limit:
            break
        await asyncio.sleep(0.25)
    await asyncio.sleep(0.5)  # a duplicate on its way would land now
    mailbox.scan()
    return time.time() - t0


def notice_report(mailbox, evs, all_events):
    by = mailbox.scan()
    ours = {f"<{e.id}@mithril>" for e in all_events}
    delays, missing, dups = [], [], []
    for e in evs:
        times = by.get(f"<{e.id}@mithril>", [])
        if not times:
            missing.append(e)
            continue
        if len(times) > 1:
            dups.append((e, len(times)))
        delays.append((min(times) - e.at, e))
    strays = sum(len(t) for mid, t in by.items() if mid not in ours)
    return {
        "expected": len(evs),
        "received": len(evs) - len(missing),
        "missing": [f"{e.id} (connection {e.conn}, request {e.rid})" for e in missing],
        "duplicates": sum(n - 1 for _, n in dups),
        "duplicated": [f"{e.id} x{n}" for e, n in dups],
        "strays": strays,
        "delay_max": max((d for d, _ in delays), default=0.0),
        "delay_p50": pct([d for d, _ in delays], 0.5),
        "delay_p99": pct([d for d, _ in delays], 0.99),
        "slowest": (lambda x: f"{x[1].id} ({ms(x[0])})")(max(delays, key=lambda x: x[0])) if delays else "",
    }


def haproxy_log(cl, since_offset):
    """Per server: requests, HAProxy-generated answers (5xx from the balancer), retries and
    redispatches, from RUN/logs/haproxy.log past SINCE_OFFSET."""
    rx = re.compile(
        r" api/(\S+) (-?\d+)/(-?\d+)/(-?\d+)/(-?\d+)/\+?(-?\d+) (\d{3}) \S+ \S+ \S+ (\S{4}) "
        r"\d+/\d+/\d+/\d+/(\+?)(\d+) "
    )
    out = {}
    with open(f"{cl.run}/logs/haproxy.log", errors="replace") as f:
        f.seek(since_offset)
        for line in f:
            m = rx.search(line)
            if not m:
                continue
            s = out.setdefault(m[1], {"requests": 0, "non_2xx": {}, "retried": 0, "redispatched": 0})
            s["requests"] += 1
            if not m[7].startswith("2"):
                key = f"{m[7]} {m[8]}"
                s["non_2xx"][key] = s["non_2xx"].get(key, 0) + 1
            if int(m[10]) > 0:
                s["retried"] += 1
            if m[9] == "+":
                s["redispatched"] += 1
    return out


async def lb_down_at(cl, server, limit):
    """When HAProxy's stats first show SERVER as DOWN (polled every 50 ms, LIMIT seconds)."""
    t0 = time.time()
    url = ENV["STATS_URL"] + ";csv"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as http:
        while time.time() - t0 < limit:
            try:
                async with http.get(url) as resp:
                    for row in (await resp.text()).splitlines():
                        f = row.split(",")
                        if len(f) > 17 and f[0] == "api" and f[1] == server and f[17].startswith("DOWN"):
                            return time.time()
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    return time.time()


def log_offset(cl):
    try:
        return os.path.getsize(f"{cl.run}/logs/haproxy.log")
    except OSError:
        return 0


class Report:
    def __init__(self):
        self.lines, self.checks, self.data = [], [], {}

    def line(self, key, text):
        self.lines.append((key, text))

    def check(self, ok, text):
        self.checks.append((bool(ok), text))
        return ok

    def emit(self, cl, extra=None, recs=None):
        ok = all(c for c, _ in self.checks)
        print(f"\n== drill {NAME}{' (' + extra + ')' if extra else ''}: {'PASS' if ok else 'FAIL'}")
        for key, text in self.lines:
            print(f"   {key:<11} {text}")
        for c, text in self.checks:
            print(f"   {'ok' if c else 'FAILED':<11} {text}")
        print(f"   {'run':<11} {cl.run}", flush=True)
        self.data.update(
            drill=NAME, phase=extra, passed=ok,
            lines=[f"{k}: {t}" for k, t in self.lines],
            checks=[{"ok": c, "what": t} for c, t in self.checks],
        )
        with open(f"{cl.run}/drill-result.json", "w") as f:
            json.dump(self.data, f, indent=2, default=str)
        return ok


def dump_requests(cl, recs):
    """Every request of the drill, one JSON object a line (never a secret), for a look
    after the fact: RUN/drill-requests.jsonl."""
    with open(f"{cl.run}/drill-requests.jsonl", "w") as f:
        for r in recs:
            d = {k: v for k, v in r.__dict__.items() if k != "secret"}
            f.write(json.dumps(d) + "\n")


def failures(recs, kind=None):
    out = {}
    for r in recs:
        if (kind is None or r.kind == kind) and r.status != 200:
            k = f"{r.kind} {r.outcome()}"
            out[k] = out.get(k, 0) + 1
    return out


def fmt_counts(d):
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items())) or "none"


def versions_report(cl, recs, evs, allowance=None):
    """Per refreshed connection: the secret_refreshed events' versions are 1..n, n is the
    row's secret_version, and n is the number of 200s the connection got (or, for a
    connection with requests that failed in flight, between that and that plus those)."""
    allowance = allowance or {}
    oks = {}
    for r in recs:
        if r.kind == "refresh" and r.status == 200:
            oks[r.conn] = oks.get(r.conn, 0) + 1
    per = {}
    for e in evs:
        per.setdefault(e.conn, []).append(e.version)
    rows = dict((r[0], int(r[1])) for r in cl.sql("SELECT id, secret_version FROM connections"))
    gaps, mismatch, extra = [], [], []
    for conn in set(oks) | set(per):
        vs = sorted(per.get(conn, []))
        n = rows.get(conn, -1)
        if vs != list(range(1, len(vs) + 1)) or n != len(vs):
            gaps.append(f"{conn}: row {n}, events {vs[:5]}{'...' if len(vs) > 5 else ''} ({len(vs)})")
        got = oks.get(conn, 0)
        if n < got or n > got + allowance.get(conn, 0):
            mismatch.append(f"{conn}: version {n}, 200s {got}, failed in flight {allowance.get(conn, 0)}")
        elif n > got:
            extra.append(conn)
    rid_events = {e.rid for e in evs}
    unaudited = [r.rid for r in recs if r.kind == "refresh" and r.status == 200 and r.rid not in rid_events]
    return {"connections": len(set(oks) | set(per)), "gaps": gaps, "mismatch": mismatch,
            "committed_unanswered": len(extra), "unaudited_200s": unaudited}


def standard_checks(rep, cl, recs, evs, mailbox, allowance=None, excused=None):
    """Notices and versions for a load drill; returns the notice report. EXCUSED(times)
    says whether a notice mailed at TIMES (sorted) is a duplicate the drill provoked on
    purpose and the design allows (see kill9)."""
    oks = {r.rid for r in recs if r.kind == "refresh" and r.status == 200}
    answered = [e for e in evs if e.rid in oks]
    n = notice_report(mailbox, answered, evs)
    everything = notice_report(mailbox, evs, evs)
    rep.line("notices", f"expected {n['expected']} (one per 200), received {n['received']}, "
             f"duplicates {n['duplicates']}; every committed rotation: {everything['expected']} events, "
             f"{everything['received']} mailed, {everything['duplicates']} duplicates; "
             f"mail from no event: {n['strays']}")
    rep.line("delay", f"commit -> SMTP accepted: max {ms(everything['delay_max'])}, "
             f"p99 {ms(everything['delay_p99'])}, median {ms(everything['delay_p50'])}"
             + (f"; slowest event {everything['slowest']}" if everything["slowest"] else ""))
    v = versions_report(cl, recs, evs, allowance)
    rep.line("versions", f"{v['connections']} connections refreshed; gaps {len(v['gaps'])}; "
             f"version vs 200s mismatches {len(v['mismatch'])}; committed with no 200 at the client "
             f"(allowed only for requests that failed in flight): {v['committed_unanswered']}")
    rep.check(not n["missing"], f"every 200 mailed ({len(n['missing'])} missing"
              + (f": {', '.join(n['missing'][:5])}" if n["missing"] else "") + ")")
    rep.check(not everything["missing"], f"every committed rotation mailed ({len(everything['missing'])} missing)")
    by = mailbox.scan()
    dup_times = {e.id: sorted(by[f"<{e.id}@mithril>"]) for e in evs if len(by.get(f"<{e.id}@mithril>", [])) > 1}
    allowed = {i: t for i, t in dup_times.items() if excused and excused(t)}
    other = {i: t for i, t in dup_times.items() if i not in allowed}
    if allowed:
        rep.line("dup excused", "; ".join(
            f"{i} x{len(t)} (first accepted {time.strftime('%H:%M:%S', time.localtime(t[0]))}"
            f".{int(t[0] % 1 * 1000):03d}, again {t[1] - t[0]:.1f}s later)" for i, t in allowed.items()))
    rep.check(not other, f"no notice twice ({sum(len(t) - 1 for t in other.values())} duplicates"
              + (f": {', '.join(f'{i} x{len(t)}' for i, t in list(other.items())[:5])}" if other else "")
              + (f"; {len(allowed)} excused, listed above" if allowed else "") + ")")
    rep.check(not v["gaps"], "versions 1..n on every connection, n = secret_version"
              + (f" (gaps: {'; '.join(v['gaps'][:3])})" if v["gaps"] else ""))
    rep.check(not v["mismatch"], "secret_version = number of 200s on every connection"
              + (f" ({'; '.join(v['mismatch'][:3])})" if v["mismatch"] else ""))
    rep.check(not v["unaudited_200s"], f"every 200 has its audit event ({len(v['unaudited_200s'])} without)")
    rep.data.update(notices=n, all_notices=everything, versions=v)
    return everything


def lb_line(rep, cl, offset):
    lb = haproxy_log(cl, offset)
    parts = []
    for server in sorted(lb):
        s = lb[server]
        parts.append(f"{server} {s['requests']} (non-2xx {fmt_counts(s['non_2xx'])}, retried {s['retried']}, "
                     f"redispatched {s['redispatched']})")
    rep.line("haproxy", "; ".join(parts) or "no log lines")
    rep.data["haproxy"] = lb
    return lb


# --- the drills -------------------------------------------------------------------------

LOAD_CLIENTS = 100
REFRESH_RATE = 50
VERIFY_RATE = 500


async def drill_rolling(cl, rep):
    clients = seed(cl, LOAD_CLIENTS, 1, 1)
    mailbox, offset = Mailbox(cl.maildir), log_offset(cl)
    load = Load(cl, clients, REFRESH_RATE, VERIFY_RATE)
    task = asyncio.create_task(load.run())
    await asyncio.sleep(3)
    say("restart-api all, one instance at a time, under load")
    t0 = time.time()
    rc, lines = await cl.cluster_cmd("restart-api", "all")
    restart_s = time.time() - t0
    await asyncio.sleep(3)
    load.stop.set()
    recs = await task
    dump_requests(cl, recs)
    say(f"load stopped; {len(recs)} requests; waiting for the notices")
    evs = events(cl)
    waited = await wait_notices(cl, mailbox, evs, 60)
    n_r = sum(1 for r in recs if r.kind == "refresh")
    rep.line("load", load.describe())
    rep.line("spread", load.spread())
    rep.line("requests", f"{n_r} refreshes, {len(recs) - n_r} verifies")
    rep.line("restarts", f"restart-api all took {restart_s:.1f}s: "
             + "; ".join(re.sub(r"^cluster: \S+ ", "", l) for l in lines if "HAProxy took" in l or "back in" in l))
    fails = failures(recs)
    rep.line("failures", fmt_counts(fails))
    lb_line(rep, cl, offset)
    rep.check(rc == 0, f"restart-api all exited {rc}")
    rep.check(not fails, f"zero failed requests ({sum(fails.values())} failed)")
    standard_checks(rep, cl, recs, evs, mailbox)
    rep.line("waited", f"{waited:.1f}s after the load for the last notice")


async def drill_kill9(cl, rep):
    clients = seed(cl, LOAD_CLIENTS, 1, 1)
    mailbox, offset = Mailbox(cl.maildir), log_offset(cl)
    load = Load(cl, clients, REFRESH_RATE, VERIFY_RATE)
    task = asyncio.create_task(load.run())
    await asyncio.sleep(4)
    # So that api-2 dies with work in hand: a burst of refreshes (60 clients, one each)
    # straight to its port, and the kill as soon as the first of them is answered, while
    # the others are queued, mid-transaction, or committed and not yet answered.
    burst_targets = load.targets[:60]
    async with session(len(burst_targets)) as direct:
        burst = [asyncio.create_task(refresh(direct, cl.api(1), c, conn)) for c, conn in burst_targets]
        await asyncio.wait(burst, timeout=0.5, return_when=asyncio.FIRST_COMPLETED)
        t_api = time.time()
        pid = cl.kill("api-2")
        say(f"kill -9 api-2 (pid {pid})")
        burst_recs = await asyncio.gather(*burst)
    t_down = await lb_down_at(cl, "api-2", 5)
    await asyncio.sleep(max(0.0, t_api + 2 - time.time()))
    t_worker = time.time()
    pid = cl.kill("workers-2")
    say(f"kill -9 workers-2 (pid {pid})")
    await asyncio.sleep(8)
    load.stop.set()
    recs = await task
    recs = recs + burst_recs
    dump_requests(cl, recs)
    say(f"load stopped; {len(recs)} requests; waiting for the notices (survivors' sweepers and reconciler)")
    evs = events(cl)
    reconcile = seconds(ENV.get("MITHRIL_RECONCILE_AFTER"), "10m")
    lease = seconds(ENV.get("MITHRIL_NOTICE_LEASE"), "30")
    waited = await wait_notices(cl, mailbox, evs, reconcile + lease + 60)
    inflight = [r for r in recs if r.status != 200 and r.t0 <= t_api <= r.t1]
    # HAProxy sends a request on a kept-alive connection to api-2 until its checks take it
    # out; when that connection turns out dead, HAProxy closes the caller's connection
    # without an answer (so that the caller may retry), and logs nothing.
    unrouted = [r for r in recs if r.status == 0 and not r.backend and t_api < r.t0 <= t_down
                and "Disconnected" in r.error and r.target == cl.base]
    other = [r for r in recs if r.status != 200 and r not in inflight and r not in unrouted]
    allowance = {}
    for r in inflight + unrouted:
        if r.kind == "refresh":
            allowance[r.conn] = allowance.get(r.conn, 0) + 1
    n_r = sum(1 for r in recs if r.kind == "refresh")
    rep.line("load", load.describe())
    rep.line("spread", load.spread())
    rep.line("settings", f"MITHRIL_RECONCILE_AFTER={ENV.get('MITHRIL_RECONCILE_AFTER', '10m (default)')}, "
             f"MITHRIL_NOTICE_LEASE={ENV.get('MITHRIL_NOTICE_LEASE', '30 (default)')}")
    burst_ok = sum(1 for r in burst_recs if r.status == 200)
    burst_rids = {r.rid for r in burst_recs if r.status != 200}
    burst_committed = sum(1 for e in evs if e.rid in burst_rids)
    rep.line("smtp", f"the mail server answers MAIL after {ENV.get('DRILL_SMTP_DELAY_MS')} ms (smtp_sink.py --delay-ms), "
             "so workers hold notices mid-send")
    rep.line("kills", f"api-2 at {t_api - load.started:.1f}s, workers-2 at {t_worker - load.started:.1f}s "
             "into the load; neither restarted")
    rep.line("burst", f"{len(burst_recs)} refreshes straight to api-2 just before its kill: {burst_ok} answered 200, "
             f"{len(burst_recs) - burst_ok} failed at the client ({fmt_counts(failures(burst_recs))}); "
             f"of those, {burst_committed} had committed (audit event with their request id)")
    rep.line("requests", f"{n_r} refreshes ({len(burst_recs)} of them the burst), {len(recs) - n_r} verifies")
    rep.line("in flight", f"failed at the client while in flight at the api-2 kill (allowed): {fmt_counts(failures(inflight))}")
    rep.line("unanswered", f"sent through HAProxy after the kill, before its checks took api-2 out "
             f"({t_down - t_api:.1f}s after the kill), and closed by HAProxy without an answer (allowed): "
             f"{fmt_counts(failures(unrouted))}")
    rep.line("failures", f"any other failure: {fmt_counts(failures(other))}")
    lb_line(rep, cl, offset)
    for r in other[:5]:
        rep.line("", f"{r.kind} {r.outcome()} via {r.target} (backend {r.backend or '-'}), sent {r.t0 - t_api:+.3f}s "
                 f"from the api-2 kill, ended {r.t1 - t_api:+.3f}s: {r.error}")
    rep.check(not other, f"no failure but those in flight at the kill or left unanswered by HAProxy before it took api-2 out ({len(other)} others)")

    def killed_mid_send(times):
        # The one duplicate a kill -9 may cause by design: the mail server accepted the
        # notice as the worker died, before it could mark it sent; its claim lapsed and
        # the notice went again, with the same Message-ID (README, "A notice goes once").
        return (len(times) == 2 and t_worker - 0.5 <= times[0] <= t_worker + 0.2
                and times[1] - times[0] >= lease - 1)

    standard_checks(rep, cl, recs, evs, mailbox, allowance, killed_mid_send)
    pushed = cl.log_lines("a notice the queue lost was pushed again")
    swept = cl.log_lines("outbox sweeper re-pushed rows")
    by = mailbox.scan()
    late = sorted(min(by[f"<{e.id}@mithril>"]) - e.at for e in evs if by.get(f"<{e.id}@mithril>"))
    late = [d for d in late if d > 5]
    rep.line("recovery", f"notices later than 5s (left by the dead processes): {len(late)}"
             + (f", {ms(late[0])} to {ms(late[-1])}" if late else "")
             + f"; reconciler re-pushes logged: {pushed}; sweeper re-push batches logged: {swept}")
    # A notice the dead worker held goes out within a minute of the kill (the lease and
    # the queue's heartbeat, on their defaults), not after the reconcile window.
    overdue = [e for e in evs if by.get(f"<{e.id}@mithril>")
               and min(by[f"<{e.id}@mithril>"]) - max(e.at, t_worker) > 60]
    rep.check(not overdue, f"every notice mailed within 60 s of its commit or of the workers-2 kill, "
              f"whichever came later ({len(overdue)} later)")
    rep.line("waited", f"{waited:.1f}s after the load for the last notice to be sent and every claim settled")


async def drill_same_connection(cl, rep):
    [client] = seed(cl, 1, 1, 0)
    conn = client.refresh[0]
    mailbox = Mailbox(cl.maildir)
    n = 45
    # One session per instance, each with its connections opened up front, then every
    # request at once.
    sessions = [session(n) for _ in cl.ports]
    try:
        async def warm(s, url):
            async with s.get(url) as resp:
                await resp.read()

        await asyncio.gather(*(
            warm(s, f"{cl.api(i)}/health/live") for i, s in enumerate(sessions) for _ in range(n // len(cl.ports))
        ))
        recs = await asyncio.gather(*(
            refresh(sessions[k % len(cl.ports)], cl.api(k % len(cl.ports)), client, conn) for k in range(n)
        ))

        async def check_all():
            table = {}
            for r in recs:
                if r.status == 200:
                    vs = await asyncio.gather(*(verify(sessions[i], cl.api(i), r.secret) for i in range(len(cl.ports))))
                    table[r.secret] = [v.status for v in vs]
            return table

        at_once = await check_all()
        evs = events(cl)
        waited = await wait_notices(cl, mailbox, evs, 60)
        after_jobs = await check_all()
    finally:
        for s in sessions:
            await s.close()
    row = cl.sql(f"SELECT secret_hash, secret_version FROM connections WHERE id = '{conn.id}'")[0]
    statuses = {}
    for r in recs:
        statuses[r.outcome()] = statuses.get(r.outcome(), 0) + 1
    per_instance = {}
    for k, r in enumerate(recs):
        per_instance[k % len(cl.ports)] = per_instance.get(k % len(cl.ports), 0) + 1

    def judge(table, when):
        everywhere = [s for s, v in table.items() if all(x == 200 for x in v)]
        refused = [s for s, v in table.items() if all(x == 401 for x in v)]
        mixed = len(table) - len(everywhere) - len(refused)
        current = [s for s in everywhere if hashlib.sha256(s.encode()).hexdigest() == row[0]]
        rep.line(f"verify {when}", f"{len(everywhere)} secret(s) verify on all {len(cl.ports)} instances, "
                 f"{len(refused)} refused on all, {mixed} mixed; the one that verifies is the row's current "
                 f"digest: {'yes' if current else 'no'}")
        rep.check(len(everywhere) == 1 and len(refused) == len(table) - 1 and current,
                  f"{when}: exactly one of the {len(table)} secrets verifies, on every instance, and it is the current one")

    rep.line("load", f"{n} concurrent refreshes (grace 0) of one connection, straight to the instances' ports "
             f"({', '.join(f'api-{i + 1}: {c}' for i, c in sorted(per_instance.items()))}); one client, "
             f"within its burst of 60")
    rep.line("requests", f"{n} refreshes, then {len(at_once) * len(cl.ports)} verifies at once and again after the jobs ran")
    rep.line("answers", fmt_counts(statuses))
    rep.check(statuses.get("200") == n, f"all {n} answered 200")
    rep.check(len({r.secret for r in recs if r.secret}) == statuses.get("200", 0), "every secret distinct")
    judge(at_once, "at once")
    judge(after_jobs, "after jobs")
    notes = notice_report(mailbox, evs, evs)
    rep.line("notices", f"expected {n}, events {len(evs)}, received {notes['received']}, duplicates {notes['duplicates']}")
    rep.line("delay", f"commit -> SMTP accepted: max {ms(notes['delay_max'])}, median {ms(notes['delay_p50'])}")
    vs = sorted(e.version for e in evs)
    rep.line("versions", f"secret_version {row[1]}, events {vs[0] if vs else '-'}..{vs[-1] if vs else '-'}")
    rep.check(vs == list(range(1, n + 1)) and int(row[1]) == n, f"versions 1..{n}, secret_version {n}")
    rep.check(notes["received"] == n and len(evs) == n, f"{n} notices")
    rep.check(notes["duplicates"] == 0, "no notice twice")
    rep.line("waited", f"{waited:.1f}s for the notices")
    rep.data.update(notices=notes, at_once=at_once.__len__())


async def until(ready, deadline, failure):
    """Polls `ready` every 20 ms; RuntimeError(`failure`) once `deadline` (epoch s) passes."""
    while not ready():
        if time.time() > deadline:
            raise RuntimeError(failure)
        await asyncio.sleep(0.02)


async def restart_redis(cl):
    """SHUTDOWN NOSAVE of the drill's own Redis, then the same server again on its port:
    empty, as a Redis without persistence comes back."""
    port = ENV.get("DRILL_REDIS_PORT", "")
    # Never the shared Redis: only the one drill.bash started for this drill.
    if not port or not cl.redis.endswith(f":{port}"):
        raise RuntimeError(f"refusing to restart {cl.redis}: not the drill's own Redis")
    t0 = time.time()
    cl.redis_cli("shutdown", "nosave")
    await until(lambda: not cl.alive("redis"), t0 + 15, "the drill's Redis did not shut down")
    down = time.time()
    # As long as a restart takes (a service manager, a container): DRILL_REDIS_DOWN seconds.
    await asyncio.sleep(max(0.0, t0 + float(ENV.get("DRILL_REDIS_DOWN") or 2) - time.time()))
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", f'source "{cl.lib}/cluster.bash"; source "{cl.lib}/drill.bash"; drill_start_redis {port}',
        env={**ENV, "RUN": cl.run},
    )
    if await proc.wait() != 0:
        raise RuntimeError(f"restarting the drill's Redis failed (exit {proc.returncode})")
    await until(lambda: cl.redis_cli("ping") == "PONG", time.time() + 15, "the drill's Redis does not answer")
    up = time.time()
    return t0, down, up, cl.redis_cli("dbsize")


async def drill_redis_restart(cl, rep):
    clients = seed(cl, LOAD_CLIENTS, 1, 1)
    mailbox, offset = Mailbox(cl.maildir), log_offset(cl)
    load = Load(cl, clients, REFRESH_RATE, VERIFY_RATE)
    task = asyncio.create_task(load.run())
    await asyncio.sleep(5)
    say(f"restarting Redis ({cl.redis}) empty")
    t0, down, up, dbsize = await restart_redis(cl)
    say(f"Redis gone after {down - t0:.2f}s, answering again after {up - t0:.2f}s (dbsize {dbsize})")
    await asyncio.sleep(10)
    load.stop.set()
    recs = await task
    dump_requests(cl, recs)
    say(f"load stopped; {len(recs)} requests; waiting for the notices (reconcile window)")
    evs = events(cl)
    reconcile = seconds(ENV.get("MITHRIL_RECONCILE_AFTER"), "10m")
    # The reconciler looks every reconcile/4; the worker polls every 250 ms.
    bound = reconcile + reconcile / 4 + 5
    lease = seconds(ENV.get("MITHRIL_NOTICE_LEASE"), "30")
    # Until every claim is settled too: a claim left `sending` lapses after the lease and
    # the notice goes again, a duplicate this wait must see.
    waited = await wait_notices(cl, mailbox, evs, max(bound, lease) + 60)
    n_r = sum(1 for r in recs if r.kind == "refresh")
    during = [r for r in recs if r.status != 200 and r.t1 >= t0]
    rep.line("load", load.describe())
    rep.line("spread", load.spread())
    rep.line("redis", f"the drill's own redis-server ({cl.redis}, --save '' --appendonly no) shut down "
             f"{t0 - load.started:.1f}s into the load, gone {down - t0:.2f}s later, serving again (empty) "
             f"{up - t0:.2f}s after the shutdown")
    rep.line("settings", f"MITHRIL_RECONCILE_AFTER={ENV.get('MITHRIL_RECONCILE_AFTER', '10m (default)')}: a notice lost by the "
             f"queue is due within about {bound:.0f}s (window + window/4 between looks + 5s); "
             f"MITHRIL_NOTICE_LEASE={ENV.get('MITHRIL_NOTICE_LEASE', '30 (default)')}")
    states = notice_states(cl)
    rep.line("claims", f"sent_notifications after the wait: {fmt_counts(states)}")
    rep.line("requests", f"{n_r} refreshes, {len(recs) - n_r} verifies")
    fails = failures(recs)
    rep.line("failures", f"{fmt_counts(fails)} ({len(during)} from the restart on; reported, not a check: "
             "the drill's invariant is about answered rotations)")
    lb_line(rep, cl, offset)
    notes = standard_checks(rep, cl, recs, evs, mailbox)
    late = [e for e in evs if e.id]  # all
    by = mailbox.scan()
    slow = sum(1 for e in late if by.get(f"<{e.id}@mithril>") and min(by[f'<{e.id}@mithril>']) - e.at > 5)
    pushed = cl.log_lines("a notice the queue lost was pushed again")
    swept = cl.log_lines("outbox sweeper re-pushed rows")
    rep.line("recovery", f"notices later than 5s: {slow}; reconciler re-pushes logged: {pushed}; "
             f"sweeper re-push batches: {swept}")
    rep.check(notes["delay_max"] <= bound, f"every notice within the reconcile window "
              f"(longest {ms(notes['delay_max'])}, bound {bound:.0f}s)")
    rep.line("waited", f"{waited:.1f}s after the load for the last notice")


def invalidations_pending(cl):
    """Outbox invalidate_credentials rows not dispatched, and jobs of that queue still
    waiting, scheduled or running in Redis; and the count done."""
    [[undispatched, total]] = cl.sql(
        "SELECT count(*) FILTER (WHERE dispatched_at IS NULL AND dead_at IS NULL), count(*) "
        "FROM outbox WHERE kind = 'invalidate_credentials'"
    )
    q = f"{cl.ns}:invalidate_credentials"
    active = int(cl.redis_cli("llen", f"{q}:active") or 0)
    scheduled = int(cl.redis_cli("zcard", f"{q}:scheduled") or 0)
    inflight = 0
    for key in cl.redis_cli("--scan", "--pattern", f"{q}:inflight*").split():
        inflight += int(cl.redis_cli("scard", key) or 0)
    done = int(cl.redis_cli("scard", f"{q}:done") or 0)
    return int(undispatched), int(total), active, scheduled, inflight, done


async def drill_retired(cl, rep):
    n = 40
    clients = seed(cl, n, 1, 0)
    sessions = [session(2 * n) for _ in cl.ports]
    try:
        # Gateways verify all the time: every instance (and Redis) holds S0 as valid first.
        warm = await asyncio.gather(*(
            verify(sessions[i], cl.api(i), c.refresh[0].secret) for c in clients for i in range(len(cl.ports))
        ))

        async def pair(k, c):
            a, b = k % 2, 1 - k % 2
            r1 = await refresh(sessions[a], cl.api(a), c, c.refresh[0], grace=3600)
            r2 = await refresh(sessions[b], cl.api(b), c, c.refresh[0], grace=0)
            return r1, r2

        pairs = await asyncio.gather(*(pair(k, c) for k, c in enumerate(clients)))
        t0 = time.time()
        while True:
            state = invalidations_pending(cl)
            undispatched, total, active, scheduled, inflight, done = state
            if (undispatched == active == scheduled == inflight == 0 and done >= total) or time.time() - t0 > 60:
                break
            await asyncio.sleep(0.2)
        drained = time.time() - t0
        rounds = []
        for _ in range(3):
            rounds.append(await asyncio.gather(*(
                asyncio.gather(*(
                    verify(sessions[i], cl.api(i), s)
                    for s in (c.refresh[0].secret, r1.secret, r2.secret) for i in range(len(cl.ports))
                ))
                for c, (r1, r2) in zip(clients, pairs)
            )))
            await asyncio.sleep(0.5)
    finally:
        for s in sessions:
            await s.close()
    refreshed = sum(1 for r1, r2 in pairs if r1.status == 200 and r2.status == 200)
    stale, s2_refused, bad = set(), set(), 0
    m = len(cl.ports)
    for rnd in rounds:
        for k, vs in enumerate(rnd):
            st = [v.status for v in vs]
            old, new = st[: 2 * m], st[2 * m:]
            if any(x == 200 for x in old):
                stale.add(k)
            if any(x != 200 for x in new):
                s2_refused.add(k)
            bad += sum(1 for x in st if x not in (200, 401))
    rep.line("load", f"{n} connections of {n} clients (one each); on each, a verify of S0 on both instances, "
             f"then refresh grace 3600 on one instance and at once grace 0 on the other, straight to their ports "
             f"({m} API instances, {cl.worker_count} workers)")
    rep.line("requests", f"{2 * n} refreshes ({refreshed} pairs both 200), {len(warm)} warming verifies "
             f"({sum(1 for w in warm if w.status == 200)} 200), then 3 rounds x {n} x 3 secrets x {m} instances verifies")
    rep.line("jobs", f"invalidate_credentials: {state[1]} outbox rows, undispatched {state[0]}, Redis active {state[2]}, "
             f"scheduled {state[3]}, running {state[4]}, done {state[5]}; waited {drained:.1f}s")
    rep.line("result", f"connections still accepting S0 or S1 on some instance: {len(stale)} of {n}; "
             f"refusing S2 somewhere: {len(s2_refused)}; answers other than 200/401: {bad}")
    rep.check(refreshed == n, f"all {2 * n} refreshes 200")
    rep.check(state[0] == state[2] == state[3] == state[4] == 0, "every invalidate_credentials job ran before the verifies")
    rep.check(not stale, f"S0 and S1 refused on every instance for all {n} connections ({len(stale)} not)")
    rep.check(not s2_refused, f"S2 verifies on every instance ({len(s2_refused)} not)")
    rep.check(bad == 0, "every verify answered 200 or 401")
    rep.data.update(stale=len(stale), s2_refused=len(s2_refused))


def impatient(cl, client, conn, n, budget, instances):
    """N callers over INSTANCES (indexes of API instances, in turn): connect all, send all,
    read status lines for BUDGET seconds after the last send, then close every socket at
    once. Plain sockets and poll(2), no event loop, so the callers keep their time even
    on a busy machine. Returns, for each, a dict: status (or None), rid, instance, sent,
    answered, closed (wall clock)."""
    import select
    import socket

    path = f"/api/clients/{client.id}/connections/{conn.id}/actions/refresh_secret"
    socks, callers = [], []
    for k in range(n):
        i = instances[k % len(instances)]
        sock = socket.create_connection(("127.0.0.1", cl.ports[i]))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        socks.append(sock)
        rid = f"drill-impatient-{k}-{uuid.uuid4().hex}"
        callers.append({"rid": rid, "status": None, "instance": i, "buf": b"",
                        "req": (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1:{cl.ports[i]}\r\n"
                                f"Authorization: Bearer {client.token}\r\nx-request-id: {rid}\r\n"
                                f"Content-Length: 0\r\n\r\n").encode()})
    for sock, c in zip(socks, callers):
        sock.sendall(c.pop("req"))
        c["sent"] = time.time()
    deadline = time.monotonic() + budget
    poller = select.poll()
    fds = {sock.fileno(): k for k, sock in enumerate(socks)}
    for sock in socks:
        poller.register(sock, select.POLLIN)
    waiting = len(socks)
    while waiting and (left := deadline - time.monotonic()) > 0:
        for fd, _ in poller.poll(left * 1000):
            k = fds[fd]
            c = callers[k]
            try:
                data = socks[k].recv(4096)
            except OSError:
                data = b""
            c["buf"] += data
            if b"\r\n" in c["buf"] or not data:
                parts = c["buf"].split(b"\r\n", 1)[0].split()
                c["status"] = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
                c["answered"] = time.time()
                poller.unregister(fd)
                waiting -= 1
    for sock in socks:
        sock.close()
    closed = time.time()
    for c in callers:
        c["closed"] = closed
        c.pop("buf")
    return callers


async def impatient_run(cl, rep, mailbox, client, label, instances, n=150, budget=0.015):
    """One experiment on CLIENT's connection; its report lines carry LABEL. Returns
    (committed, answered 200 in time, allowance, notices ok)."""
    conn = client.refresh[0]

    def version():
        return int(cl.sql(f"SELECT secret_version FROM connections WHERE id = '{conn.id}'")[0][0])

    v0 = version()
    # Warm the instances first (token cache, connection lookup, pools), as a caller that
    # has been using the service finds them: reads only, nothing rotates.
    async with session(16) as http:
        for i in instances:
            for _ in range(3):
                async with http.get(f"{cl.api(i)}/api/clients/{client.id}/connections/{conn.id}",
                                    headers={"Authorization": f"Bearer {client.token}"}) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"warming read answered {resp.status}")
    callers = impatient(cl, client, conn, n, budget, instances)
    answered = {}
    for c in callers:
        key = str(c["status"]) if c["status"] else "no answer in 15 ms"
        answered[key] = answered.get(key, 0) + 1
    ok_in_time = sum(1 for c in callers if c["status"] == 200)
    # Whatever was running finishes; nothing else may start. Then one patient caller.
    await asyncio.sleep(2)
    v_mid = version()
    attempts = []
    async with session() as http:
        for _ in range(5):
            r = await refresh(http, cl.base, client, conn)
            attempts.append(r.outcome())
            if r.status != 429:
                break
            wait = r.error.split()[-1]
            await asyncio.sleep(float(wait) if wait.isdigit() else 1.0)
    patient_ok = attempts[-1] == "200"
    v1 = version()
    committed = v1 - v0 - (1 if patient_ok else 0)
    evs = [e for e in events(cl) if e.conn == conn.id]
    await wait_notices(cl, mailbox, evs, 60)
    notes = notice_report(mailbox, evs, evs)
    first = min(c["sent"] for c in callers)
    spread = max(c["sent"] for c in callers) - first
    times = sorted(c["answered"] - c["sent"] for c in callers if c["status"])
    by_rid = {c["rid"]: c for c in callers}
    gone = sorted(e.at - by_rid[e.rid]["closed"] for e in evs if e.rid in by_rid and by_rid[e.rid]["status"] != 200)
    where = ", ".join(f"api-{i + 1}" for i in instances)
    closed = max(c["closed"] for c in callers) - first
    rep.line(label, f"{n} callers on {where} (sends over {ms(spread)}, every socket closed {ms(closed)} after the first send); answered in time {sum(1 for c in callers if c['status'])}: "
             f"{fmt_counts(answered)}" + (f" (status lines {ms(times[0])} to {ms(times[-1])} after their send)" if times else ""))
    rep.line("", f"secret_version {v0} -> {v_mid} (2 s after the callers left) -> {v1} (patient: {' then '.join(attempts)}): "
             f"{committed} committed for the impatient, {ok_in_time} answered 200 in time; notices {notes['received']} "
             f"for {len(evs)} events, duplicates {notes['duplicates']}, longest commit -> SMTP {ms(notes['delay_max'])}")
    # The server learns a caller is gone when it reads the FIN: allow it 5 ms for that.
    tolerance = 0.005
    late = [g for g in gone if g > tolerance]
    if gone:
        rep.line("", f"the {len(gone)} committed without a 200 in time: occurred_at (taken once the row lock is held) "
                 f"{ms(gone[0])} to {ms(gone[-1])} after the callers closed; {len(gone) - len(late)} before the close or "
                 f"within {ms(tolerance)} of it (the caller was still there, or the server could not know yet), "
                 f"{len(late)} later")
    allowance = len(instances)
    rep.line("", f"committed {committed} vs answered 200 in time {ok_in_time}: "
             f"<= answered + 1 {'yes' if committed <= ok_in_time + 1 else 'no'}, "
             f"<= answered + {allowance} (one in flight per instance's actor) {'yes' if committed <= ok_in_time + allowance else 'no'}")
    rep.check(patient_ok, f"{label}: the patient refresh answered 200")
    rep.check(len(late) <= allowance,
              f"{label}: rotations that reached the row lock more than {ms(tolerance)} after their caller closed: "
              f"{len(late)} <= {allowance} (the one running on each instance's actor when the callers left)")
    rep.check(notes["received"] == len(evs) == committed + (1 if patient_ok else 0) and notes["duplicates"] == 0,
              f"{label}: one notice per committed rotation")
    rep.data[label] = {"answered": answered, "committed": committed, "ok_in_time": ok_in_time,
                       "notices": notes["received"], "events": len(evs)}


async def drill_impatient(cl, rep, phase):
    # Punctual callers on a busy machine: this process (it drives nothing else) runs ahead
    # of the cluster's, so the sockets close when the 15 ms are up, not when it gets a core.
    try:
        os.nice(-10)
    except OSError:
        pass
    spread_client, single_client = seed(cl, 2, 1, 0)
    mailbox = Mailbox(cl.maildir)
    limit = ENV.get("MITHRIL_REFRESH_LIMIT") or "60/min, burst 60 (the default)"
    rep.line("load", f"per connection 150 refreshes (grace 0): TCP connections opened first, then every request "
             f"sent, status lines read for 15 ms after the last send, then every socket closed; one patient refresh after "
             f"(through HAProxy); MITHRIL_REFRESH_LIMIT={limit}; two connections of two clients: one's callers "
             f"spread over the {len(cl.ports)} instances in turn, the other's all on api-1")
    await impatient_run(cl, rep, mailbox, spread_client, "spread", list(range(len(cl.ports))))
    await impatient_run(cl, rep, mailbox, single_client, "one inst.", [0])


DRILLS = {
    "rolling": drill_rolling,
    "kill9": drill_kill9,
    "same-connection": drill_same_connection,
    "redis-restart": drill_redis_restart,
    "retired-stays-retired": drill_retired,
    "impatient-callers": drill_impatient,
}


async def main():
    global NAME
    ap = argparse.ArgumentParser()
    ap.add_argument("name", choices=sorted(DRILLS))
    ap.add_argument("--phase", default=None)
    args = ap.parse_args()
    NAME = args.name
    cl = Cluster()
    rep = Report()
    t0 = time.time()
    try:
        if args.name == "impatient-callers":
            await drill_impatient(cl, rep, args.phase)
        else:
            await DRILLS[args.name](cl, rep)
    except Exception as e:  # noqa: BLE001 - a drill that breaks is a failed drill, with its reason
        import traceback
        traceback.print_exc()
        rep.check(False, f"the drill itself failed: {type(e).__name__}: {e}")
    rep.line("took", f"{time.time() - t0:.1f}s (without the cluster's start and stop)")
    return 0 if rep.emit(cl, args.phase) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
