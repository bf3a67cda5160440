#!/usr/bin/env python3
"""PayFlow kill -9 chaos experiment: a soak experiment, not a test.

Starts its own `payflow dev`, drives clients that send money with
Idempotency-Keys and retry, kills payflow with SIGKILL at chosen moments (the
plan), then waits for settlement and checks the money invariants in Postgres.
See docs/chaos.md. Usually run through scripts/chaos.sh, which builds payflow,
starts the `run` stack and migrates it; this file needs only the Python 3
standard library, psql and redis-cli.
"""
import argparse
import contextlib
import http.client
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.parse
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
STATE_DIR = os.path.join(ROOT, ".payflow", "run")
# The pid of the `payflow dev` this script runs now; scripts/chaos.sh stops it
# if this script dies without stopping it itself.
PIDFILE = os.path.join(STATE_DIR, "chaos-payflow.pid")
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(os.path.expanduser("~"), ".cache/payflow/target")
DEFAULT_BIN = os.path.join(TARGET, "debug", "payflow")
# The ports of `payflow dev`'s components (gateway first), from the same
# PAYFLOW_*_PORT variables payflow reads (as scripts/lib.sh payflow_ports).
PORTS = [int(os.environ.get(f"PAYFLOW_{c}_PORT", d)) for c, d in
         (("GATEWAY", 3000), ("WALLET", 3001), ("TRANSACTION", 3002), ("NOTIFICATION", 3003),
          ("AUTH", 3004), ("WORKER", 3005))]
GW = ("127.0.0.1", PORTS[0])
SIGNUP = 100000  # 1000.00 in cents
RABBIT_STACK = "run"  # the stack whose servers the rabbit, pgcrash and redisrestart steps restart
T0 = time.time()

# Set by main() from the options and the environment.
BIN = DEFAULT_BIN
DB_URL = None
LOGFILE = None

FAULT_POINTS = {
    "transaction-after-hold":
        "accept path: the PENDING row and its key are recorded and the wallet holds the money; no "
        "settle message and no stored answer yet, the client gets no answer",
    "transaction-after-accept":
        "accept path: accepted and stored (outbox row, idempotent answer), the 201 is not sent",
    "worker-after-post":
        "worker: the transfers are posted at the wallet, the transactions are not yet COMPLETED",
    "relay-after-publish":
        "outbox relay: messages published to RabbitMQ, not yet marked published (they go out twice)",
    "reversal-after-void":
        "reversal: stuck transfers voided at the wallet, the transactions not yet FAILED; started with "
        "PAYFLOW_REVERSAL_OLDER_THAN=15s, it fires only if a transaction is stuck longer (agedreversal "
        "arranges that)",
}
STEPS = {
    "random": "kill -9 at a random moment of the load; restart after 1-3 s",
    "burst": "release 40 transfers at the same instant, kill -9 10-60 ms later; restart",
    "startup": "kill -9; restart; kill -9 again 150-600 ms after the spawn (mid-startup); restart",
    "reversalkill": "kill -9; restart; kill -9 again 0-120 ms after the log says 'payflow dev is up' "
                    "(when the first reversal pass runs); restart",
    "fault:POINT": "kill -9; restart with PAYFLOW_FAULT=POINT, so payflow SIGKILLs itself the first time it "
                   "reaches POINT (killed by us if it has not within 30 s); restart",
    "agedreversal": "burst + kill -9 to leave transfers stuck; restart; after 20 s kill -9 and restart with "
                    "PAYFLOW_FAULT=reversal-after-void and PAYFLOW_REVERSAL_OLDER_THAN=15s, so the first "
                    "reversal pass voids them and dies before recording it; restart",
    "redisflush": "redis-cli FLUSHALL on the stack's Redis (rate limits, idempotency fast path, revoked "
                  "tokens) under load; no kill",
    "rabbit": f"restart RabbitMQ (scripts/stack.sh restart-rabbitmq {RABBIT_STACK}) under load; payflow "
              "is restarted if it exits",
    "rabbitkill": "restart RabbitMQ; 2-4 s into it kill -9 payflow and restart it while the broker is "
                  "still down",
    "pgcrash": f"crash Postgres under load (scripts/stack.sh crash-postgres {RABBIT_STACK}: stop -m immediate, "
               "start, WAL recovery); payflow keeps running and must reconnect",
    "redisrestart": f"stop and start Redis under load (scripts/stack.sh restart-redis {RABBIT_STACK}; its data "
                    "is gone); payflow keeps running and must reconnect",
}
# The steps that restart a server of the stack, and the stack.sh command for it.
SERVER_STEPS = {"rabbit": "restart-rabbitmq", "rabbitkill": "restart-rabbitmq", "pgcrash": "crash-postgres",
                "redisrestart": "restart-redis"}
DEFAULT_PLAN = "random,random,burst,random,startup,random,rabbit,random,random,burst,random"
QUICK_PLAN = "random,burst,startup,redisflush,fault:transaction-after-hold,random"


class SetupError(Exception):
    """The experiment could not run or not be checked (exit status 2)."""


class Interrupted(BaseException):
    """SIGTERM; a BaseException so no `except Exception` swallows it."""


def now():
    return round(time.time() - T0, 3)


def log(*a):
    line = " ".join(str(x) for x in (f"[{now():8.2f}]",) + a)
    print(line, flush=True)
    if LOGFILE:
        with open(LOGFILE, "a") as f:
            f.write(line + "\n")


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


# ----------------------------------------------------------------- payflow --

class Supervisor:
    def __init__(self, rundir):
        self.rundir = rundir
        self.logpath = os.path.join(rundir, "payflow.log")
        self.proc = None
        self.lock = threading.Lock()
        self.expected_down = False
        self.events = []  # kills, restarts, unexpected exits
        self.stop = False
        # A fixed JWT key, so access tokens survive the restarts.
        key_file = os.path.join(rundir, "jwt.pem")
        if not os.path.exists(key_file):
            r = subprocess.run([BIN, "keygen"], capture_output=True, text=True)
            if r.returncode != 0:
                raise SetupError(f"{BIN} keygen failed: {r.stderr.strip()[-500:]}")
            with open(key_file, "w") as f:
                f.write(r.stdout)
        self.env = dict(os.environ)
        with open(key_file) as f:
            self.env["PAYFLOW_JWT_PRIVATE_KEY"] = f.read()
        # Rate limits off: the clients send ~100 requests/s from 127.0.0.1.
        self.env.update({
            "PAYFLOW_RATE_LIMIT_IP_PER_MINUTE": "0",
            "PAYFLOW_RATE_LIMIT_USER_PER_MINUTE": "0",
            "PAYFLOW_RATE_LIMIT_AUTH_PER_MINUTE": "0",
        })

    @contextlib.contextmanager
    def down_on_purpose(self):
        """While inside, an exit of payflow is ours: the watcher does not restart it."""
        with self.lock:
            self.expected_down = True
        try:
            yield
        finally:
            with self.lock:
                self.expected_down = False

    def ev(self, kind, **kw):
        e = {"t": now(), "kind": kind, **kw}
        self.events.append(e)
        log("EVENT", json.dumps(e))

    def start(self, extra_env=None):
        with self.lock:
            if self.stop:  # shut down: the watcher must not start it again
                return None
            with open(self.logpath, "ab") as f:
                f.write(f"\n===== payflow dev started t={now()} {time.strftime('%FT%T')} =====\n".encode())
            logf = open(self.logpath, "ab")
            env = dict(self.env, **(extra_env or {}))
            # Own session: a Ctrl-C in the terminal reaches this script, not payflow.
            self.proc = subprocess.Popen([BIN, "dev"], env=env, stdout=logf, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=ROOT)
            logf.close()
            with open(PIDFILE, "w") as f:
                f.write(f"{self.proc.pid}\n")
            self.ev("start", pid=self.proc.pid, **({"env": extra_env} if extra_env else {}))
            return self.proc.pid

    def kill9(self, note=""):
        with self.lock:
            p = self.proc
            if p is None or p.poll() is not None:
                self.ev("kill-skipped", note=note)
                return None
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
            self.ev("kill9", pid=p.pid, note=note)
            return p.pid

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def wait_ready(self, timeout=90):
        deadline = time.time() + timeout
        for port in PORTS:
            while True:
                try:
                    c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                    c.request("GET", "/readyz")
                    r = c.getresponse()
                    r.read()
                    c.close()
                    if r.status == 200:
                        break
                except Exception:
                    pass
                if time.time() > deadline or not self.alive():
                    return False
                time.sleep(0.2)
        return True

    def watch(self):
        """Restart payflow when it exits by itself (not by our kill)."""
        while not self.stop:
            time.sleep(0.3)
            with self.lock:
                p = self.proc
                if self.expected_down or p is None or p.poll() is None:
                    continue
                rc = p.returncode
            self.ev("unexpected-exit", pid=p.pid, rc=rc)
            time.sleep(1)
            with self.lock:
                if self.expected_down or self.stop or (self.proc is not p):
                    continue
            self.start()

    def shutdown(self):
        """SIGTERM the payflow we run and wait for it (SIGKILL after 30 s)."""
        with self.lock:
            self.stop = True
            self.expected_down = True
            p = self.proc
            if p is not None and p.poll() is None:
                log(f"stopping payflow dev (pid {p.pid})")
                p.terminate()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    log("payflow dev did not exit within 30 s of SIGTERM; sending SIGKILL")
                    p.kill()
                    p.wait()
                self.ev("stopped", pid=p.pid, rc=p.returncode)
            try:
                os.unlink(PIDFILE)
            except FileNotFoundError:
                pass


# ------------------------------------------------------------------ client --

def http_call(method, path, body=None, headers=None, timeout=20):
    c = http.client.HTTPConnection(*GW, timeout=timeout)
    try:
        h = {"Content-Type": "application/json"}
        h.update(headers or {})
        c.request(method, path, body=body, headers=h)
        r = c.getresponse()
        data = r.read()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
    finally:
        c.close()


class Users:
    def __init__(self):
        self.users = []  # dicts: email, password, id, token
        self.lock = threading.Lock()

    def register(self, n, tag):
        def one(i):
            email = f"chaos-{tag}-{i}@payflow.local"
            pw = "Chaos-Passw0rd1"
            for _ in range(30):
                try:
                    st, _, data = http_call("POST", "/api/auth/register",
                                            json.dumps({"email": email, "password": pw, "name": f"Chaos {i}"}))
                    if st == 201:
                        d = json.loads(data)
                        return {"email": email, "password": pw, "id": d["user"]["id"], "token": d["accessToken"]}
                    log("register", email, st, data[:200])
                except Exception as e:
                    log("register", email, "error", e)
                time.sleep(1)
            return None
        out = [None] * n
        ths = []
        for i in range(n):
            def run(i=i):
                out[i] = one(i)
            t = threading.Thread(target=run, daemon=True)
            ths.append(t)
            t.start()
            if len(ths) % 4 == 0:
                for t in ths[-4:]:
                    t.join()
        for t in ths:
            t.join()
        missing = [i for i, u in enumerate(out) if u is None]
        if missing:
            raise SetupError(f"could not register {len(missing)} of {n} users (e.g. chaos-{tag}-{missing[0]})")
        self.users = out

    def relogin(self, u, old_token):
        with self.lock:
            if u["token"] != old_token:
                return
            try:
                st, _, data = http_call("POST", "/api/auth/login",
                                        json.dumps({"email": u["email"], "password": u["password"]}))
                if st == 200:
                    u["token"] = json.loads(data)["accessToken"]
            except Exception:
                pass


DEFINITIVE_RETRY = {401, 408, 409, 425, 429}  # 4xx that are not a definitive answer


class Recorder:
    def __init__(self):
        self.transfers = []
        self.lock = threading.Lock()

    def add(self, rec):
        with self.lock:
            self.transfers.append(rec)


def send_until_definitive(users, rec, sender, tag, max_secs=150):
    """POST the same key and body until 201 or a definitive 4xx; record every attempt."""
    start = time.time()
    backoff = 0.25
    # Some first attempts give up after 2-30 ms and disconnect, as an impatient
    # mobile client does: the server must finish what it started, and the retry
    # must get its outcome.
    give_up = random.random() < CFG["give_up_p"]
    while True:
        tok = sender["token"]
        a = {"t": now(), "who": tag}
        timeout = 20
        if give_up:
            timeout, give_up = random.uniform(0.002, 0.03), False
            a["gave_up_after_s"] = round(timeout, 4)
        try:
            st, hdr, data = http_call("POST", "/api/transactions", rec["body"],
                                      {"Authorization": f"Bearer {tok}", "Idempotency-Key": rec["key"]},
                                      timeout=timeout)
            a["status"] = st
            a["replayed"] = hdr.get("idempotent-replayed") == "true"
            try:
                d = json.loads(data)
                if isinstance(d, dict):
                    a["id"] = d.get("id")
                    a["code"] = d.get("code")
                    if st >= 400:
                        a["error"] = d.get("error")
            except Exception:
                a["raw"] = data[:200].decode(errors="replace")
        except Exception as e:
            a["conn_error"] = f"{type(e).__name__}: {e}"[:200]
            st = None
        rec["attempts"].append(a)
        if st == 201 or (st is not None and 400 <= st < 500 and st not in DEFINITIVE_RETRY):
            return st
        if st == 401:
            users.relogin(sender, tok)
        if time.time() - start > max_secs:
            return None
        time.sleep(backoff * (0.5 + random.random()))
        backoff = min(backoff * 2, 4.0)


CFG = {"think": (0.05, 0.2), "big_p": 0.0, "give_up_p": 0.05, "plan": DEFAULT_PLAN.split(",")}


def logical_transfer(users, recorder, a, b, concurrent_dup=False, resend_p=0.2):
    key = f"chaos-{uuid.uuid4()}"
    cents = random.randint(1, 2500)
    if random.random() < CFG["big_p"]:
        cents = random.randint(20000, 90000)
    amount = f"{cents // 100}.{cents % 100:02d}"
    body = json.dumps({"toUserId": b["id"], "amount": amount, "description": f"chaos:{key}"}, separators=(",", ":"))
    rec = {"key": key, "from": a["id"], "to": b["id"], "cents": cents, "body": body, "attempts": [],
           "t_start": now(), "concurrent_dup": concurrent_dup}
    recorder.add(rec)
    if concurrent_dup:
        res = {}

        def dup():
            res["dup"] = send_until_definitive(users, rec, a, "dup")
        t = threading.Thread(target=dup, daemon=True)
        t.start()
        res["main"] = send_until_definitive(users, rec, a, "main")
        t.join()
    else:
        st = send_until_definitive(users, rec, a, "main")
        if st == 201 and random.random() < resend_p:
            time.sleep(random.random() * 2)
            send_until_definitive(users, rec, a, "resend")
    rec["t_end"] = now()


class Load:
    def __init__(self, users, recorder, nworkers):
        self.users = users.users
        self.u = users
        self.rec = recorder
        self.n = nworkers
        self.stop = False
        self.threads = []
        us = self.users[:]
        random.shuffle(us)
        self.hot = [(us[2 * i], us[2 * i + 1]) for i in range(6)]

    def pick(self):
        if random.random() < 0.35:
            a, b = random.choice(self.hot)
            return (a, b) if random.random() < 0.5 else (b, a)
        a, b = random.sample(self.users, 2)
        return a, b

    def worker(self):
        while not self.stop:
            r = random.random()
            if r < 0.08:
                # A->B and B->A at the same moment
                a, b = self.pick()
                t = threading.Thread(target=logical_transfer, args=(self.u, self.rec, b, a), daemon=True)
                t.start()
                logical_transfer(self.u, self.rec, a, b)
                t.join()
            else:
                a, b = self.pick()
                logical_transfer(self.u, self.rec, a, b, concurrent_dup=(r > 0.95))
            time.sleep(random.uniform(*CFG["think"]))

    def start(self):
        for _ in range(self.n):
            t = threading.Thread(target=self.worker, daemon=True)
            t.start()
            self.threads.append(t)

    def burst(self, n=40):
        """n logical transfers released at the same moment; returns the threads."""
        barrier = threading.Barrier(n + 1)
        ths = []
        for _ in range(n):
            a, b = self.pick()

            def go(a=a, b=b):
                barrier.wait()
                logical_transfer(self.u, self.rec, a, b, resend_p=0)
            t = threading.Thread(target=go, daemon=True)
            t.start()
            ths.append(t)
        self.threads.extend(ths)
        barrier.wait()
        return ths

    def join(self, timeout):
        deadline = time.time() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.time()))


class RegChurn:
    """Registers a fresh user every ~1.5 s during the chaos; retries the same email;
    after a failed attempt a 409 means 'created by the lost attempt' -> login."""
    def __init__(self, tag):
        self.tag = tag
        self.stop = False
        self.recs = []

    def run(self):
        i = 0
        while not self.stop:
            i += 1
            # Lower case, as auth stores it, so the check finds it again.
            email = f"churn-{self.tag}-{i}@payflow.local".lower()
            pw = "Chaos-Passw0rd1"
            rec = {"email": email, "attempts": []}
            self.recs.append(rec)
            start = time.time()
            path, body = "/api/auth/register", json.dumps({"email": email, "password": pw, "name": f"Churn {i}"})
            while time.time() - start < 120:
                try:
                    st, _, data = http_call("POST", path, body)
                    rec["attempts"].append({"t": now(), "path": path, "status": st,
                                            "body": data[:200].decode(errors="replace")})
                    if st in (200, 201):
                        d = json.loads(data)
                        rec["id"] = d["user"]["id"]
                        rec["final"] = path
                        break
                    if st == 409 and path.endswith("register"):
                        path, body = "/api/auth/login", json.dumps({"email": email, "password": pw})
                        continue
                except Exception as e:
                    rec["attempts"].append({"t": now(), "path": path, "conn_error": str(e)[:100]})
                time.sleep(0.5)
            time.sleep(1.5)


# ------------------------------------------------------------------- chaos --

def stack_script(*args):
    return [os.path.join(ROOT, "scripts", "stack.sh"), *args]


def restart_rabbitmq():
    """scripts/stack.sh restart-rabbitmq; not cut short by an interrupt (a
    broker left half restarted would outlive this script)."""
    return restart_server("restart-rabbitmq")


def restart_server(command):
    return subprocess.Popen(stack_script(command, RABBIT_STACK), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=ROOT)


def finish_restart(rp):
    try:
        return rp.communicate()[0]
    except BaseException:
        rp.wait(300)
        raise


def redis_flushall():
    u = urllib.parse.urlsplit(os.environ["PAYFLOW_REDIS_URL"])
    cmd = ["redis-cli", "-h", u.hostname or "127.0.0.1", "-p", str(u.port or 6379)]
    env = dict(os.environ)
    if u.password:
        env["REDISCLI_AUTH"] = urllib.parse.unquote(u.password)
        if u.username:
            cmd += ["--user", urllib.parse.unquote(u.username)]
    return subprocess.run(cmd + ["FLUSHALL"], capture_output=True, text=True, env=env)


def chaos(sup, load, plan):
    def gap():
        time.sleep(random.uniform(3, 10))

    def restart(delay=None):
        time.sleep(delay if delay is not None else random.uniform(1, 3))
        sup.start()
        ok = sup.wait_ready(90)
        sup.ev("ready" if ok else "not-ready")

    def kill_then_start(note, extra=None):
        """kill -9, then a fresh process 1-2 s later (the kill's aftermath settles first)."""
        sup.kill9(note)
        time.sleep(random.uniform(1, 2))
        sup.start(extra)

    def plain_kill(note="random"):
        with sup.down_on_purpose():
            sup.kill9(note)
            restart()

    time.sleep(8)
    for i, step in enumerate(plan, 1):
        log(f"step {i}/{len(plan)}: {step}")
        if step == "random":
            plain_kill()
        elif step == "burst":
            with sup.down_on_purpose():
                delay = random.uniform(0.01, 0.06)
                load.burst(40)
                time.sleep(delay)
                sup.kill9(f"{step}: 40 requests released {delay*1000:.0f} ms before")
                restart()
        elif step == "startup":
            with sup.down_on_purpose():
                kill_then_start("before startup-kill")
                d = random.uniform(0.15, 0.6)
                time.sleep(d)
                sup.kill9(f"during startup, {d*1000:.0f} ms after spawn")
                restart()
        elif step.startswith("fault:") or step == "agedreversal":
            with sup.down_on_purpose():
                if step == "agedreversal":
                    # stuck transactions, aged past the 60 s timeout without a restart in between
                    load.burst(40)
                    time.sleep(random.uniform(0.01, 0.05))
                    sup.kill9("agedreversal: burst kill")
                    restart()
                    # the fault process reverses what is older than 15 s (the
                    # running process would reverse them itself at its 60 s tick)
                    sup.ev("aging stuck transactions for 20 s")
                    time.sleep(20)
                    point = "reversal-after-void"
                else:
                    point = step.split(":", 1)[1]
                extra = {"PAYFLOW_FAULT": point}
                if point == "reversal-after-void":
                    extra["PAYFLOW_REVERSAL_OLDER_THAN"] = "15s"
                kill_then_start(f"before fault {point}", extra)
                p = sup.proc
                try:
                    p.wait(30)
                    sup.ev("fault-fired", point=point, rc=p.returncode)
                except subprocess.TimeoutExpired:
                    sup.kill9(f"fault {point} did not fire within 30 s")
                restart()
        elif step == "reversalkill":
            # kill right after "payflow dev is up", when the first reversal pass runs
            with sup.down_on_purpose():
                off = os.path.getsize(sup.logpath)  # the old process logged "up" long ago
                kill_then_start("before reversal-kill")
                deadline = time.time() + 30
                up = False
                while time.time() < deadline and not up:
                    with open(sup.logpath, errors="replace") as f:
                        f.seek(off)
                        up = "payflow dev is up" in f.read()
                    if not up:
                        time.sleep(0.01)
                d = random.uniform(0.0, 0.12)
                time.sleep(d)
                sup.kill9(f"reversal-kill: {d*1000:.0f} ms after 'payflow dev is up'")
                restart()
        elif step == "redisflush":
            r = redis_flushall()
            sup.ev("redis-flushall", rc=r.returncode, out=(r.stdout + r.stderr).strip()[-200:])
        elif step == "rabbitkill":
            # kill payflow while RabbitMQ is down, restart it while the broker is still down
            sup.ev("rabbit-restart-begin")
            rp = restart_rabbitmq()
            try:
                time.sleep(random.uniform(2, 4))
                with sup.down_on_purpose():
                    kill_then_start("while RabbitMQ restarts")
                    sup.ev("ready" if sup.wait_ready(90) else "not-ready")
            finally:
                out = finish_restart(rp)
            sup.ev("rabbit-restart-end", rc=rp.returncode, out=out[-300:])
        elif step in ("rabbit", "pgcrash", "redisrestart"):
            name = {"rabbit": "rabbit-restart", "pgcrash": "postgres-crash", "redisrestart": "redis-restart"}[step]
            sup.ev(f"{name}-begin")
            rp = restart_server(SERVER_STEPS[step])
            out = finish_restart(rp)
            sup.ev(f"{name}-end", rc=rp.returncode, out=out[-300:])
            # the watcher restarts payflow if it exited; wait for readiness
            time.sleep(2)
            sup.wait_ready(90)
        else:
            raise AssertionError(f"unknown step {step}")  # the option parser refuses these
        gap()


# ------------------------------------------------------------------- check --

def psql(sql):
    r = subprocess.run(["psql", DB_URL, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise SetupError(f"psql failed: {r.stderr.strip()[-1000:]}")
    return r.stdout.strip()


def pjson(sql):
    out = psql(f"select coalesce(json_agg(x), '[]'::json) from ({sql}) x")
    return json.loads(out)


def uids_sql(ids):
    return "ARRAY[" + ",".join(f"'{i}'::uuid" for i in ids) + "]::uuid[]"


def wait_settled(ids, timeout=240):
    U = uids_sql(ids)
    deadline = time.time() + timeout
    while True:
        n = int(psql(f"select count(*) from txn.transactions where status in ('PENDING','PROCESSING') "
                     f"and from_user_id = any({U})"))
        log("open transactions:", n)
        if n == 0 or time.time() > deadline:
            return n
        time.sleep(5)


def wait_notifications_stable(ids, timeout=90):
    U = uids_sql(ids)
    last, stable_since, deadline = None, time.time(), time.time() + timeout
    while time.time() < deadline:
        n = int(psql(f"select count(*) from notify.notifications where user_id = any({U})"))
        if n != last:
            last, stable_since = n, time.time()
        elif time.time() - stable_since > 10:
            break
        time.sleep(2)
    log("notifications:", last)


def check(rundir):
    try:
        with open(os.path.join(rundir, "users.json")) as f:
            users = json.load(f)
        with open(os.path.join(rundir, "transfers.jsonl")) as f:
            transfers = [json.loads(line) for line in f]
    except (OSError, ValueError) as e:
        raise SetupError(f"{rundir} is not a finished chaos run directory: {e}")
    ids = [u["id"] for u in users]
    U = uids_sql(ids)
    R = {"checks": {}}
    fails = R["checks"]

    def res(name, ok, **info):
        fails[name] = {"result": "PASS" if ok else "FAIL", **info}
        log(("PASS " if ok else "FAIL ") + name, json.dumps(info, default=str)[:1500])

    txs = pjson(f"select id, from_user_id, to_user_id, amount, status, error_message, description, created_at, "
                f"completed_at from txn.transactions where from_user_id = any({U}) or to_user_id = any({U})")
    keys = pjson(f"select user_id, key, transaction_id, response_status, response_body, completed_at, created_at "
                 f"from txn.idempotency_keys where user_id = any({U})")
    accts = pjson(f"select id, user_id, balance, pending_debits from wallet.accounts where user_id = any({U})")
    acct_ids = [a["id"] for a in accts]
    A = uids_sql(acct_ids)
    wtransfers = pjson(f"select id, kind, debit_account_id, credit_account_id, amount, state, timeout_at, created_at, "
                       f"resolved_at from wallet.transfers where debit_account_id = any({A}) "
                       f"or credit_account_id = any({A}) or id in (select id from txn.transactions "
                       f"where from_user_id = any({U}))")
    notes = pjson(f"select id, event_id, user_id, type, transaction_id from notify.notifications "
                  f"where user_id = any({U})")
    key_by = {(x["user_id"], x["key"]): x for x in keys}
    acct_by_user = {a["user_id"]: a for a in accts}
    tx_by_id = {t["id"]: t for t in txs}
    wt_by_id = {t["id"]: t for t in wtransfers}

    # --- global ledger invariants
    sums = pjson("select currency, sum(balance)::text as sum, count(*) from wallet.accounts group by currency")
    res("sum of all wallet balances is zero (per currency)", all(int(s["sum"]) == 0 for s in sums), sums=sums)
    neg = pjson("select id, user_id, balance, pending_debits from wallet.accounts "
                "where kind = 'user' and balance - pending_debits < 0")
    res("no negative available balance (all user accounts)", not neg, rows=neg)
    ent_sum = psql("select coalesce(sum(amount),0) from wallet.ledger_entries")
    res("sum of all ledger entries is zero", int(ent_sum) == 0, sum=ent_sum)
    bad_posted = pjson("select t.id, t.kind, t.amount, count(e.id) n, sum(e.amount) s, "
                       "sum(case when e.amount > 0 then e.amount else 0 end) plus "
                       "from wallet.transfers t left join wallet.ledger_entries e on e.transfer_id = t.id "
                       "where t.state = 'posted' group by t.id, t.kind, t.amount "
                       "having count(e.id) <> 2 or sum(e.amount) <> 0 "
                       "or sum(case when e.amount > 0 then e.amount else 0 end) <> t.amount")
    nposted = psql("select count(*) from wallet.transfers where state = 'posted'")
    res("every posted transfer has exactly two entries (+amount/-amount)", not bad_posted,
        posted_transfers=int(nposted), bad=bad_posted[:20])
    bad_other = pjson("select t.id, t.state, count(*) n from wallet.transfers t join wallet.ledger_entries e "
                      "on e.transfer_id = t.id where t.state <> 'posted' group by t.id, t.state")
    res("non-posted transfers have no entries", not bad_other, bad=bad_other[:20])
    bal_vs_ledger = pjson("select a.id, a.balance, coalesce(sum(e.amount),0) s from wallet.accounts a "
                          "left join wallet.ledger_entries e on e.account_id = a.id group by a.id, a.balance "
                          "having a.balance <> coalesce(sum(e.amount),0)")
    res("every account balance equals the sum of its ledger entries", not bal_vs_ledger, bad=bal_vs_ledger[:20])
    holds = pjson("select a.id, a.pending_debits, coalesce(sum(t.amount) filter (where t.state='pending'),0) h "
                  "from wallet.accounts a left join wallet.transfers t on t.debit_account_id = a.id "
                  "group by a.id, a.pending_debits having a.pending_debits <> "
                  "coalesce(sum(t.amount) filter (where t.state='pending'),0)")
    res("pending_debits equals the sum of pending transfers", not holds, bad=holds[:20])

    lc = subprocess.run([BIN, "ledger-check"], capture_output=True, text=True,
                        env={**os.environ, "PAYFLOW_DATABASE_URL": DB_URL, "PAYFLOW_LOG": "error"})
    res("payflow ledger-check", lc.returncode == 0, rc=lc.returncode, stdout=lc.stdout.strip()[-1500:],
        stderr=lc.stderr.strip()[-500:])

    # --- transactions of this run
    open_all = pjson("select id, status, created_at from txn.transactions where status in ('PENDING','PROCESSING')")
    ours_open = [t for t in txs if t["status"] in ("PENDING", "PROCESSING")]
    res("no transaction of this run left PENDING/PROCESSING", not ours_open, open=ours_open[:20],
        open_in_whole_db=len(open_all))
    status_counts = {}
    for t in txs:
        status_counts[t["status"]] = status_counts.get(t["status"], 0) + 1
    R["tx_status_counts"] = status_counts

    by_desc = {}
    foreign = []
    for t in txs:
        d = t.get("description") or ""
        if d.startswith("chaos:"):
            by_desc.setdefault(d[6:], []).append(t)
        else:
            foreign.append(t)
    rec_by_key = {r["key"]: r for r in transfers}
    orphan_tx = [t for k, ts in by_desc.items() if k not in rec_by_key for t in ts]
    res("every transaction of these users belongs to a logical transfer of the client", not foreign and not orphan_tx,
        foreign=foreign[:10], orphan=orphan_tx[:10])

    got201, never201, undetermined = [], [], []
    dup_tx, id_mismatch, multi_ids, not_final_201 = [], [], [], []
    moved_without_201, key_row_bad = [], []
    attempts = retries = conn_err = n5xx = n409 = replays = 0
    status_hist = {}
    gave_up = {}  # final status of the transfers whose first request gave up
    for r in transfers:
        at = r["attempts"]
        attempts += len(at)
        if at and "gave_up_after_s" in at[0]:
            final = [t["status"] for t in by_desc.get(r["key"], [])] or ["none"]
            gave_up[final[0]] = gave_up.get(final[0], 0) + 1
        for a in at:
            s = a.get("status", "conn")
            status_hist[str(s)] = status_hist.get(str(s), 0) + 1
            if "conn_error" in a:
                conn_err += 1
            elif a["status"] >= 500:
                n5xx += 1
            elif a["status"] == 409:
                n409 += 1
            if a.get("replayed"):
                replays += 1
        per_who = {}
        for a in at:
            per_who[a["who"]] = per_who.get(a["who"], 0) + 1
        retries += sum(v - 1 for v in per_who.values())
        ids201 = {a.get("id") for a in at if a.get("status") == 201}
        mine = by_desc.get(r["key"], [])
        k = key_by.get((r["from"], r["key"]))
        if ids201:
            got201.append(r)
            if len(ids201) != 1:
                multi_ids.append({"key": r["key"], "ids": list(ids201)})
            if len(mine) != 1:
                dup_tx.append({"key": r["key"], "tx": [(t["id"], t["status"]) for t in mine], "ids201": list(ids201)})
            elif mine[0]["id"] not in ids201:
                id_mismatch.append({"key": r["key"], "tx": mine[0]["id"], "ids201": list(ids201)})
            for i in ids201:
                t = tx_by_id.get(i)
                if t is None or t["status"] not in ("COMPLETED", "FAILED"):
                    not_final_201.append({"key": r["key"], "id": i, "status": t and t["status"]})
            if k is None or k["transaction_id"] not in ids201:
                key_row_bad.append({"key": r["key"], "row": k, "ids201": list(ids201)})
        else:
            final = [a for a in at if "status" in a and 400 <= a["status"] < 500
                     and a["status"] not in DEFINITIVE_RETRY]
            (never201 if final else undetermined).append(r)
            moved = [t for t in mine if t["status"] == "COMPLETED"
                     or (wt_by_id.get(t["id"]) or {}).get("state") == "posted"]
            if moved or (k and k["transaction_id"] and k["transaction_id"] in tx_by_id
                         and tx_by_id[k["transaction_id"]]["status"] == "COMPLETED"):
                moved_without_201.append({"key": r["key"], "final": final[-1:] if final else None,
                                          "tx": [(t["id"], t["status"]) for t in mine],
                                          "attempts": at})
    R["client"] = {"logical_transfers": len(transfers), "with_201": len(got201),
                   "definitive_4xx_only": len(never201), "undetermined": len(undetermined),
                   "http_attempts": attempts, "retries": retries, "conn_errors": conn_err, "5xx": n5xx,
                   "409": n409, "replayed_answers": replays, "gave_up_first_request": gave_up,
                   "status_histogram": status_hist}
    log("client:", json.dumps(R["client"]))
    res("every 201 answer of a key names the same transaction id", not multi_ids, bad=multi_ids[:20])
    res("exactly one transaction per (sender, key) that got a 201", not dup_tx and not id_mismatch,
        n=len(got201), dup=dup_tx[:20], mismatch=id_mismatch[:20])
    res("every 201 transaction ends COMPLETED or FAILED", not not_final_201, bad=not_final_201[:20])
    res("idempotency record of every 201 key points at its transaction", not key_row_bad, bad=key_row_bad[:10])
    res("no money moved for a logical transfer that never got a 201", not moved_without_201,
        n=len(never201) + len(undetermined), bad=moved_without_201[:10])
    res("every logical transfer got a definitive answer (201 or 4xx) within the retry budget", not undetermined,
        bad=[{"key": r["key"], "last": r["attempts"][-3:]} for r in undetermined][:10])
    never_codes = {}
    for r in never201:
        a = [a for a in r["attempts"] if "status" in a][-1]
        c = f'{a["status"]} {a.get("code")}'
        never_codes[c] = never_codes.get(c, 0) + 1
    R["never201_final_codes"] = never_codes

    # --- transactions vs wallet transfers
    mism = []
    for t in txs:
        w = wt_by_id.get(t["id"])
        st = w and w["state"]
        if t["status"] == "COMPLETED" and st != "posted":
            mism.append((t["id"], t["status"], st))
        if t["status"] == "FAILED" and st not in ("voided", None):
            mism.append((t["id"], t["status"], st))
    res("COMPLETED <=> wallet transfer posted; FAILED => voided/absent", not mism, bad=mism[:20])
    pay = [w for w in wtransfers if w["kind"] == "payment"]
    orphan_post = [w for w in pay if w["id"] not in tx_by_id and w["state"] == "posted"]
    orphan_pending = [w for w in pay if w["state"] == "pending"]
    orphan_void = [w["id"] for w in pay if w["id"] not in tx_by_id and w["state"] == "voided"]
    res("no posted/pending wallet transfer without a transaction", not orphan_post and not orphan_pending,
        posted=orphan_post[:10], pending=orphan_pending[:10], voided_without_txn=len(orphan_void))

    # --- balances from COMPLETED transactions
    exp = {i: SIGNUP for i in ids}
    for t in txs:
        if t["status"] == "COMPLETED":
            exp[t["from_user_id"]] -= t["amount"]
            exp[t["to_user_id"]] += t["amount"]
    badbal = []
    for i in ids:
        a = acct_by_user.get(i)
        if a is None or a["balance"] != exp[i] or a["pending_debits"] != 0:
            badbal.append({"user": i, "expected": exp[i], "account": a})
    res("balance == 1000.00 + received - sent (COMPLETED only), no holds left", not badbal, bad=badbal[:20],
        users=len(ids))
    signup = [w for w in wtransfers if w["kind"] == "signup_credit"]
    res("one posted sign-up credit of 1000.00 per user",
        len(signup) == len(ids) and all(w["state"] == "posted" and w["amount"] == SIGNUP for w in signup),
        n=len(signup))

    # --- notifications
    nmap = {}
    for n in notes:
        if n["transaction_id"]:
            nmap.setdefault(n["transaction_id"], []).append((n["user_id"], n["type"]))
    badn = []
    for t in txs:
        got = sorted(nmap.get(t["id"], []))
        if t["status"] == "COMPLETED":
            want = sorted([(t["from_user_id"], "TRANSACTION_COMPLETED"), (t["to_user_id"], "TRANSACTION_RECEIVED")])
        elif t["status"] == "FAILED":
            want = [(t["from_user_id"], "TRANSACTION_FAILED")]
        else:
            continue
        if got != want:
            badn.append({"tx": t["id"], "status": t["status"], "got": got, "want": want})
    stray = [tid for tid in nmap if tid not in tx_by_id]
    res("notifications: exactly one per party per final transaction, of the right type", not badn and not stray,
        bad=badn[:20], n_bad=len(badn), stray=stray[:10],
        counts={"COMPLETED": sum(1 for t in txs if t["status"] == "COMPLETED"),
                "FAILED": sum(1 for t in txs if t["status"] == "FAILED"), "notifications": len(notes)})
    cp = os.path.join(rundir, "churn.json")
    if os.path.exists(cp):
        with open(cp) as f:
            churn = json.load(f)
        emails = [c["email"] for c in churn]
        if emails:
            E = "ARRAY[" + ",".join(f"'{e}'" for e in emails) + "]"
            rows = pjson(f"select u.email, u.id, u.wallet_created, a.balance, a.pending_debits, "
                         f"(select count(*) from wallet.transfers t where t.credit_account_id = a.id "
                         f"and t.kind = 'signup_credit' and t.state = 'posted') credits "
                         f"from auth.users u left join wallet.accounts a on a.user_id = u.id where u.email = any({E})")
            byemail = {r["email"]: r for r in rows}
            bad = []
            for c in churn:
                r = byemail.get(c["email"])
                if "id" in c:
                    if not r or r["id"] != c["id"] or r["balance"] != SIGNUP or r["credits"] != 1:
                        bad.append({"email": c["email"], "row": r, "client": c["attempts"][-2:]})
                elif r and r["balance"] is not None and (r["balance"] != SIGNUP or r["credits"] != 1):
                    bad.append({"email": c["email"], "row": r, "client": c["attempts"][-2:]})
            unfinished = [c["email"] for c in churn if "id" not in c]
            noacct = [r for r in rows if r["balance"] is None]
            res("registration under kills: every signed-up user has one wallet with one 1000.00 credit",
                not bad, users=len(churn), succeeded=sum(1 for c in churn if "id" in c),
                unfinished=unfinished[:5], users_without_wallet=noacct[:5], bad=bad[:10])
    with open(os.path.join(rundir, "results.json"), "w") as f:
        json.dump(R, f, indent=1, default=str)
    return R


def scan_log(rundir):
    path = os.path.join(rundir, "payflow.log")
    if not os.path.exists(path):
        log("no payflow.log in", rundir)
        return
    counts, examples = {}, {}
    with open(path, errors="replace") as f:
        lines = list(f)
    for line in lines:
        low = line.lower()
        lvl = None
        if "panick" in low or "panic" in low:
            lvl = "PANIC"
        elif '"level":"error"' in low:
            lvl = "ERROR"
        elif '"level":"warn"' in low:
            lvl = "WARN"
        if not lvl:
            continue
        try:
            d = json.loads(line)
            msg = d.get("message", "")
            tgt = d.get("target", "")
        except Exception:
            msg, tgt = line.strip()[:160], ""
        k = (lvl, tgt, msg[:120])
        counts[k] = counts.get(k, 0) + 1
        examples.setdefault(k, line.strip()[:600])
    out = sorted(((v, k) for k, v in counts.items()), reverse=True)
    with open(os.path.join(rundir, "log_summary.txt"), "w") as f:
        for v, k in out:
            f.write(f"{v:6d} {k[0]:5s} {k[1]} | {k[2]}\n        e.g. {examples[k]}\n")
    log("log summary written:", len(out), "distinct warn/error/panic messages")


# -------------------------------------------------------------------- main --

def count_kills(events):
    """Our kill -9, and the fault points' own SIGKILL."""
    return sum(1 for e in events if e["kind"] == "kill9" or (e["kind"] == "fault-fired" and e.get("rc") == -9))


def summary(rundir, results):
    """Prints the last line and returns the exit status (0 all PASS, 1 any FAIL)."""
    checks = results["checks"].values()
    passed = sum(1 for c in checks if c["result"] == "PASS")
    failed = len(checks) - passed
    n = results.get("client", {}).get("logical_transfers", 0)
    try:
        with open(os.path.join(rundir, "events.json")) as f:
            kills = count_kills(json.load(f))
    except (OSError, ValueError):
        kills = "?"
    if failed:
        log("failed checks:", ", ".join(k for k, c in results["checks"].items() if c["result"] != "PASS"))
    log("results:", os.path.join(rundir, "results.json"))
    log(f"chaos: {passed} checks passed, {failed} failed ({n} logical transfers, {kills} kill -9)")
    return 1 if failed else 0


def dump(rundir, name, obj):
    with open(os.path.join(rundir, name), "w") as f:
        json.dump(obj, f, indent=1)


def dump_transfers(rundir, recorder):
    with recorder.lock:
        with open(os.path.join(rundir, "transfers.jsonl"), "w") as f:
            for r in recorder.transfers:
                f.write(json.dumps(r) + "\n")


def require_env(names):
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        raise SetupError(f"{', '.join(missing)} not set: eval \"$(PAYFLOW_STACK_RABBITMQ=1 scripts/stack.sh env run)\" "
                         "first (scripts/chaos.sh does it)")


def require_tools(names):
    for name in names:
        if shutil.which(name) is None:
            raise SetupError(f"{name} not found in PATH")


def preflight(args, plan):
    require_env(["PAYFLOW_DATABASE_URL", "PAYFLOW_REDIS_URL", "PAYFLOW_AMQP_URL"])
    require_tools(["psql"] + (["redis-cli"] if "redisflush" in plan else []))
    if not os.access(BIN, os.X_OK):
        raise SetupError(f"{BIN} not found or not executable (cargo build -p payflow, or --bin)")
    busy = [p for p in PORTS if port_open(p)]
    if busy:
        raise SetupError(f"port(s) {', '.join(map(str, busy))} in use: another payflow (scripts/run.sh?) "
                         "would answer our requests; stop it first (scripts/run.sh stop)")
    if any(s in SERVER_STEPS for s in plan):
        r = subprocess.run(stack_script("env", RABBIT_STACK), capture_output=True, text=True,
                           env=dict(os.environ, PAYFLOW_STACK_RABBITMQ="1"))
        for var in ("PAYFLOW_AMQP_URL", "PAYFLOW_DATABASE_URL", "PAYFLOW_REDIS_URL"):
            if f"{var}='{os.environ[var]}'" not in r.stdout:
                raise SetupError(f"the steps {', '.join(SERVER_STEPS)} restart servers of the {RABBIT_STACK} "
                                 f"stack, but {var} points elsewhere")


def new_rundir():
    os.makedirs(STATE_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    for i in range(100):
        path = os.path.join(STATE_DIR, f"chaos-{stamp}" + (f"-{i}" if i else ""))
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise SetupError(f"could not create a run directory in {STATE_DIR}")


def cmd_run(args):
    global LOGFILE
    plan = args.plan
    if args.no_rabbit:
        plan = [p for p in plan if not p.startswith("rabbit")]
    CFG["think"] = args.think
    CFG["big_p"] = args.big_p
    CFG["give_up_p"] = args.give_up_p
    CFG["plan"] = plan
    if args.dry_run:
        print(f"users {args.users}, workers {args.workers}, think {args.think[0]}-{args.think[1]} s, "
              f"big-p {args.big_p}, give-up-p {args.give_up_p}, reg-churn {'on' if args.reg_churn else 'off'}")
        print(f"plan ({len(plan)} steps): {','.join(plan)}")
        return 0
    preflight(args, plan)

    rundir = new_rundir()
    LOGFILE = os.path.join(rundir, "chaos.log")
    tag = os.path.basename(rundir)[len("chaos-"):] + "-" + uuid.uuid4().hex[:4]
    log("run dir", rundir)
    log(f"plan ({len(plan)} steps): {','.join(plan)}")
    dump(rundir, "options.json", {"users": args.users, "workers": args.workers, "think": args.think,
                                  "big_p": args.big_p, "give_up_p": args.give_up_p, "reg_churn": args.reg_churn, "plan": plan, "bin": BIN})
    sup = Supervisor(rundir)
    try:
        results = experiment(args, sup, rundir, tag, plan)
    finally:
        sup.shutdown()
    # events.json again, with the stop
    dump(rundir, "events.json", sup.events)
    return summary(rundir, results)


def experiment(args, sup, rundir, tag, plan):
    sup.start()
    if not sup.wait_ready(120):
        raise SetupError(f"payflow dev not ready within 120 s (log: {sup.logpath})")
    threading.Thread(target=sup.watch, daemon=True).start()

    users = Users()
    users.register(args.users, tag)
    dump(rundir, "users.json", users.users)
    log("registered", len(users.users), "users")

    recorder = Recorder()
    load = Load(users, recorder, args.workers)
    load.start()
    log("load started with", args.workers, "workers")
    churn = RegChurn(tag)
    if args.reg_churn:
        threading.Thread(target=churn.run, daemon=True).start()
    interrupted = True
    try:
        chaos(sup, load, plan)
        time.sleep(10)
        interrupted = False
    finally:
        load.stop = True
        churn.stop = True
        if not interrupted:
            log("load stopping; waiting for in-flight logical transfers (retries up to ~150 s)")
            load.join(200)
            time.sleep(1)
        dump_transfers(rundir, recorder)
        dump(rundir, "events.json", sup.events)
        dump(rundir, "churn.json", churn.recs)
    log("load stopped;", len(recorder.transfers), "logical transfers;", count_kills(sup.events), "kill -9")
    if not sup.alive():
        sup.start()
        sup.wait_ready(90)
    wait_settled([u["id"] for u in users.users], 240)
    wait_notifications_stable([u["id"] for u in users.users])
    # write again: burst threads may have finished later
    dump_transfers(rundir, recorder)
    dump(rundir, "events.json", sup.events)
    dump(rundir, "churn.json", churn.recs)
    results = check(rundir)
    scan_log(rundir)
    return results


def cmd_check(args):
    require_env(["PAYFLOW_DATABASE_URL"])
    require_tools(["psql"])
    if not os.access(BIN, os.X_OK):
        raise SetupError(f"{BIN} not found or not executable (cargo build -p payflow, or --bin)")
    rundir = os.path.abspath(args.rundir)
    if not os.path.isdir(rundir):
        raise SetupError(f"{rundir} is not a directory")
    results = check(rundir)
    scan_log(rundir)
    return summary(rundir, results)


def plan_arg(text):
    steps = [s.strip() for s in text.split(",") if s.strip()]
    if not steps:
        raise argparse.ArgumentTypeError("empty plan")
    for s in steps:
        if s.startswith("fault:"):
            if s[6:] not in FAULT_POINTS:
                raise argparse.ArgumentTypeError(
                    f"unknown fault point '{s[6:]}' (known: {', '.join(FAULT_POINTS)})")
        elif s not in STEPS:
            raise argparse.ArgumentTypeError(
                f"unknown step '{s}' (known: {', '.join(STEPS)})")
    return steps


def think_arg(text):
    try:
        lo, hi = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI seconds, got '{text}'")
    if not 0 <= lo <= hi:
        raise argparse.ArgumentTypeError(f"expected 0 <= LO <= HI, got '{text}'")
    return (lo, hi)


def prob_arg(text):
    try:
        p = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a probability, got '{text}'")
    if not 0 <= p <= 1:
        raise argparse.ArgumentTypeError(f"expected 0 <= P <= 1, got '{text}'")
    return p


def int_at_least(lo):
    def parse(text):
        try:
            n = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got '{text}'")
        if n < lo:
            raise argparse.ArgumentTypeError(f"expected at least {lo}, got {n}")
        return n
    return parse


def steps_help():
    def table(rows):
        w = max(len(name) for name in rows) + 4
        return [textwrap.fill(d, 100, initial_indent=f"  {name:<{w - 2}}", subsequent_indent=" " * w)
                for name, d in rows.items()]
    return "\n".join(["plan steps (each followed by 3-10 s of plain load):", *table(STEPS),
                      "fault points (fault::point in services/transaction):", *table(FAULT_POINTS)])


EXIT_HELP = """exit status: 0 every check PASSed, 1 a check FAILed, 2 usage or setup error
(no stack env, payflow missing, ports 3000-3005 taken, payflow not ready, psql failed),
130/143 interrupted (payflow is stopped, nothing is checked)."""

ENV_HELP = """environment: PAYFLOW_DATABASE_URL, PAYFLOW_REDIS_URL and PAYFLOW_AMQP_URL as
`scripts/stack.sh env run` prints them (`check` needs only the first); CARGO_TARGET_DIR
(default ~/.cache/payflow/target) for the default --bin; other PAYFLOW_* settings reach payflow dev."""


def parser():
    fmt = argparse.RawDescriptionHelpFormatter
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bin", default=None, metavar="PATH",
                        help=f"the payflow binary (default $CARGO_TARGET_DIR/debug/payflow, here {DEFAULT_BIN})")
    p = argparse.ArgumentParser(
        prog="chaos.py", formatter_class=fmt,
        description="PayFlow kill -9 chaos experiment (a soak experiment, not a test; see docs/chaos.md).\n"
                    "`run` starts its own payflow dev, drives clients that send money with Idempotency-Keys\n"
                    "and retry, kills payflow with SIGKILL following a plan, waits for settlement, checks\n"
                    "the money invariants in Postgres and stops payflow. `check` re-runs the checks on a\n"
                    "finished run directory. Usually run through scripts/chaos.sh.",
        epilog=f"{steps_help()}\n\n{ENV_HELP}\n\n{EXIT_HELP}")
    sub = p.add_subparsers(dest="command", required=True, metavar="{run,check}")
    r = sub.add_parser(
        "run", parents=[common], formatter_class=fmt,
        help="run the experiment and check the result",
        description="Runs the experiment in .payflow/run/chaos-<time>/ and checks the result.\n"
                    f"default plan: {DEFAULT_PLAN}\n"
                    f"--quick plan: {QUICK_PLAN}",
        epilog=f"{steps_help()}\n\n{ENV_HELP}\n\n{EXIT_HELP}")
    r.add_argument("--users", type=int_at_least(12), default=40, metavar="N",
                   help="users to register, each with the 1000.00 sign-up credit (default 40, at least 12)")
    r.add_argument("--workers", type=int_at_least(1), default=16, metavar="N",
                   help="client threads sending money in a loop (default 16)")
    g = r.add_mutually_exclusive_group()
    g.add_argument("--plan", type=plan_arg, default=DEFAULT_PLAN.split(","), metavar="STEP,...",
                   help="comma-separated steps, run in order (default: the 11 steps above, 3-4 min in all)")
    g.add_argument("--quick", dest="plan", action="store_const", const=QUICK_PLAN.split(","),
                   help="the --quick plan above (about 80 s of load and kills, about 100 s in all)")
    r.add_argument("--no-rabbit", action="store_true", help="drop the rabbit and rabbitkill steps from the plan")
    r.add_argument("--think", type=think_arg, default=(0.05, 0.2), metavar="LO,HI",
                   help="seconds each client thread pauses between transfers, uniform (default 0.05,0.2)")
    r.add_argument("--big-p", type=prob_arg, default=0.0, metavar="P",
                   help="probability that a transfer is 200.00-900.00 instead of 0.01-25.00, so some are "
                        "refused for insufficient funds (default 0)")
    r.add_argument("--give-up-p", type=prob_arg, default=0.05, metavar="P",
                   help="probability that a transfer's first request gives up after 2-30 ms and "
                        "disconnects, then retries with its key (default 0.05)")
    r.add_argument("--reg-churn", action="store_true",
                   help="also register a new user every ~1.5 s during the chaos (adds the registration check)")
    r.add_argument("--dry-run", action="store_true", help="check the options, print the plan and exit")
    c = sub.add_parser("check", parents=[common], formatter_class=fmt,
                       help="re-run the checks on a finished run directory",
                       description="Re-runs the checks on a finished run directory against the current database\n"
                                   "(writes results.json and log_summary.txt there again).",
                       epilog=f"{ENV_HELP}\n\n{EXIT_HELP}")
    c.add_argument("rundir", metavar="RUNDIR", help="a .payflow/run/chaos-<time> directory")
    return p


def main(argv=None):
    global BIN, DB_URL
    args = parser().parse_args(argv)
    BIN = os.path.abspath(args.bin) if args.bin else DEFAULT_BIN
    DB_URL = os.environ.get("PAYFLOW_DATABASE_URL")

    def on_term(signum, frame):
        raise Interrupted()
    signal.signal(signal.SIGTERM, on_term)
    try:
        return cmd_run(args) if args.command == "run" else cmd_check(args)
    except SetupError as e:
        log("chaos: ERROR:", e)
        return 2
    except KeyboardInterrupt:
        log("chaos: interrupted (SIGINT); nothing checked")
        return 130
    except Interrupted:
        log("chaos: interrupted (SIGTERM); nothing checked")
        return 143


if __name__ == "__main__":
    sys.exit(main())
