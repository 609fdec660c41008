#!/usr/bin/env python3
"""Write bench/RESULTS.md from the files bench/run.sh leaves in a results
directory (Python 3 standard library only).

    python3 bench/report.py --results bench/results --out bench/RESULTS.md

Inputs, all optional (missing ones are reported as such):
  run.json                 mode, date, parameters of the run
  environment.json         machine and versions (written here with --snapshot,
                           which run.sh passes; otherwise read, or collected live)
  <server>.jsonl           one JSON object per `tributary bench` run
  <server>.check.json      what bench/xmpp_check.py saw (TLS, mechanisms, SM)
  <server>.server.json     pid, CPU affinity, threads, fd limit of the server
  <server>.commands.txt    the exact commands run
  tributary.processor.jsonl  CPU of `tributary process` per report step
  latency-<scenario>.png, idle-rss.png  charts by `bench-plot` (linked, not read)
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

SERVERS = ["tributary", "ejabberd", "prosody"]
ALL = SERVERS + ["mosquitto"]


def sh(*cmd, env=None):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30, env=env)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def dpkg_version(pkg):
    return sh("dpkg-query", "-W", "-f=${Version}", pkg) or "not installed"


def collect_environment(repo):
    env = {}
    cpu_model = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    os_name = ""
    try:
        for line in open("/etc/os-release"):
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip().strip('"')
    except OSError:
        pass
    env["machine"] = {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model,
        "ram_gib": round(mem_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "os": os_name,
        "arch": platform.machine(),
    }
    git_env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never touch the index
    rev = sh("git", "-C", repo, "rev-parse", "HEAD", env=git_env)
    # run.sh writes bench/results and RESULTS.md while it runs: those are
    # the run's output, not a change to what was measured.
    dirty = sh("git", "-C", repo, "status", "--porcelain", "--untracked-files=no", "--",
               ".", ":(exclude)bench/results", ":(exclude)bench/RESULTS.md", env=git_env)
    trib = os.path.join(repo, "target", "release", "tributary")
    env["versions"] = {
        "tributary": "%s (git %s%s)" % (
            sh(trib, "--version") or "?", rev[:12] or "?",
            ", working tree differs from HEAD" if dirty else ""),
        "ejabberd": "%s (Debian package; Erlang/OTP %s, erts %s)" % (
            dpkg_version("ejabberd"),
            sh("erl", "-noshell", "-eval",
               'io:format("~s", [erlang:system_info(otp_release)]), halt().') or "?",
            dpkg_version("erlang-base")),
        "prosody": "%s (Debian package; %s)" % (
            dpkg_version("prosody"),
            ", ".join("%s %s" % (p, dpkg_version(p)) for p in ("lua5.4", "lua-sec", "lua-expat"))),
        "mosquitto": "%s (Debian package)" % dpkg_version("mosquitto"),
        "openssl": sh("openssl", "version"),
        "python": platform.python_version(),
    }
    env["collected_utc"] = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    try:
        env["loadavg_at_end"] = " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        pass
    return env


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def read_jsonl(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        rows.append(json.loads(line))
                    except ValueError:
                        pass
    except OSError:
        pass
    return rows


def fmt(v, nd=1):
    if v is None or v == "":
        return "–"
    if isinstance(v, float):
        if v != v:  # NaN
            return "–"
        return ("%." + str(nd) + "f") % v
    return str(v)


def rate(v):
    """An offered/achieved rate: integral values without decimals."""
    if isinstance(v, (int, float)) and v == v:
        return "%d" % round(v) if abs(v - round(v)) < 1e-9 or v >= 100 else "%.1f" % v
    return fmt(v)


def num(r, k):
    v = r.get(k)
    return v if isinstance(v, (int, float)) else None


def sustained(r, limit, min_ach):
    """p99 within the limit, nothing lost or failed, the offered rate reached
    (the same rule as run.sh's, which decides when to stop raising the rate)."""
    p99, off, ach = num(r, "p99_ms"), num(r, "offered_rate"), num(r, "achieved_rate")
    if p99 is None or p99 > limit or (num(r, "lost") or 0) > 0 or (num(r, "failed") or 0) > 0:
        return False
    if off and (ach is None or ach < min_ach * off):
        return False
    return True


def cpu_per_100k(r):
    if num(r, "server_cpu_per_100k_s") is not None:
        return num(r, "server_cpu_per_100k_s")
    cpu, count = num(r, "server_cpu_s"), num(r, "count")
    if cpu is None or not count:
        return None
    return cpu / count * 100000


def rss_per_session(r):
    if num(r, "rss_per_session_kb") is not None:
        return num(r, "rss_per_session_kb")
    a, b, n = num(r, "server_rss_after_kb"), num(r, "server_rss_before_kb"), num(r, "clients")
    return (a - b) / n if a is not None and b is not None and n else None


def rss_mb(r, k):
    v = num(r, k)
    return None if v is None else v / 1024


def rate_table(rows, limit, min_ach, unit, processor=None, accepted=None, void=frozenset()):
    """One row per step. `accepted` names the acknowledgement whose latency
    (accepted_p50/p99) gets a column; the report scenario's is implied by
    `processor`, which adds the processor's CPU too. `void`: timestamps of
    tries run.sh did not count (too much steal time)."""
    head = ("| offered %s | achieved %s | count | lost / failed / conn. errors | p50 ms | p99 ms | p99.9 ms | max ms | "
            "server CPU s | CPU s / 100k | generator CPU s | steal %% server / generator | server RSS MB before → after | p99 < %g ms, no loss |"
            % (unit, unit, limit))
    if processor is not None:
        accepted = accepted or "accepted"
    if accepted is not None:
        head = head + " %s p50 / p99 ms |" % accepted
    if processor is not None:
        head = head + " processor CPU s |"
    # run.sh repeats a step that is not sustained (STEP_TRIES): the tries of
    # one rate are consecutive lines, numbered here in file order.
    tries = {}
    numbered = []
    for r in rows:
        k = r.get("offered_rate")
        tries[k] = tries.get(k, 0) + 1
        numbered.append((tries[k], r))
    show_try = any(n > 1 for n in tries.values())
    if show_try:
        head = head.replace("| offered %s |" % unit, "| offered %s | try |" % unit, 1)
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    for t, r in sorted(numbered, key=lambda tr: num(tr[1], "offered_rate") or 0):
        cells = [
            rate(r.get("offered_rate")), rate(num(r, "achieved_rate")), fmt(r.get("count")),
            "%s / %s / %s" % (fmt(r.get("lost")), fmt(r.get("failed")), fmt(r.get("connection_errors"))),
            fmt(num(r, "p50_ms"), 2), fmt(num(r, "p99_ms"), 2),
            fmt(num(r, "p999_ms"), 2), fmt(num(r, "max_ms"), 2), fmt(num(r, "server_cpu_s"), 2),
            fmt(cpu_per_100k(r), 2), fmt(num(r, "generator_cpu_s"), 2), "%s / %s" % (fmt(num(r, "steal_pct"), 1), fmt(num(r, "generator_steal_pct"), 1)),
            "%s → %s" % (fmt(rss_mb(r, "server_rss_before_kb")), fmt(rss_mb(r, "server_rss_after_kb"))),
            ("yes" if sustained(r, limit, min_ach) else "**no**") + (" (void: steal)" if r.get("timestamp") in void else ""),
        ]
        if accepted is not None:
            cells.append("%s / %s" % (fmt(num(r, "accepted_p50_ms"), 2), fmt(num(r, "accepted_p99_ms"), 2)))
        if show_try:
            cells.insert(1, str(t))
        if processor is not None:
            tries_cpu = processor.get(r.get("offered_rate"), [])
            p = tries_cpu[t - 1] if t <= len(tries_cpu) else None
            cells.append(fmt(p.get("processor_cpu_s") if p else None, 2))
        out.append("| " + " | ".join(cells) + " |")
    return out


def void_rule(params):
    """What RESULTS.md says of void tries, as run.json records run.sh's
    rule for that run (older runs had a narrower one)."""
    if "steal_void_pct" not in params:
        return ""
    passed = params.get("steal_void_passed")
    # runs before 2026-11-27 evening only looked at the server's core
    cores = "the server's core or the generator's" if params.get("steal_void_cores") else "the server's core"
    text = (" A try that %s with more than %s %% steal on %s was void: it did not count as a try and the step was "
            "run again (at most %s times per step, every server alike); void tries are marked in the tables."
            % ("passed or failed" if passed else "failed", params["steal_void_pct"], cores,
               params.get("steal_retries", "?")))
    if passed:
        text += (" A void try that passed still makes its rate sustained (steal only slows a server down); the "
                 "rerun gives the rate's figures in the summary and the charts.")
    if "quiet_wait_s" in params:
        text += (" Before every try run.sh waited (at most %s s) for a second in which neither core lost more "
                 "than %s %% to steal." % (params["quiet_wait_s"], params["steal_void_pct"]))
    return text


def best(rows, limit, min_ach, void=frozenset()):
    """The sustained try at the highest rate; of several there, the last
    one not void (run.sh reruns a void try that passed, for its figures)."""
    ok = [(i, r) for i, r in enumerate(rows) if sustained(r, limit, min_ach)]
    if not ok:
        return None
    return max(ok, key=lambda ir: (num(ir[1], "offered_rate") or 0, ir[1].get("timestamp") not in void, ir[0]))[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "RESULTS.md"))
    ap.add_argument("--repo", default=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    ap.add_argument("--snapshot", action="store_true",
                    help="collect machine and versions now and store them in environment.json")
    a = ap.parse_args()
    R = a.results

    run = read_json(os.path.join(R, "run.json"), {}) or {}
    params = run.get("params", {})
    env_path = os.path.join(R, "environment.json")
    env = None if a.snapshot else read_json(env_path)
    if env is None:
        env = collect_environment(a.repo)
        if a.snapshot:
            with open(env_path, "w") as f:
                json.dump(env, f, indent=1)
    limit = float(params.get("p99_limit_ms", 50))
    login_limit = float(params.get("login_p99_limit_ms", 200))
    min_ach = float(params.get("min_achieved", 0.95))

    rows = {s: read_jsonl(os.path.join(R, s + ".jsonl")) for s in ALL}
    checks = {s: read_json(os.path.join(R, s + ".check.json")) for s in ALL}
    srv = {s: read_json(os.path.join(R, s + ".server.json")) for s in ALL}
    processor = {}  # offered rate -> the processor's line for each try, in order
    for p in read_jsonl(os.path.join(R, "tributary.processor.jsonl")):
        processor.setdefault(p.get("offered_rate"), []).append(p)
    by = lambda s, sc: [r for r in rows[s] if r.get("scenario") == sc]
    present = [s for s in SERVERS if checks.get(s) or rows.get(s)]

    L = []
    w = L.append
    w("# Tributary vs ejabberd vs Prosody: benchmark results")
    w("")
    w("Written by `bench/report.py` from `%s` — do not edit by hand; re-run `bench/run.sh`." % os.path.relpath(R, os.path.dirname(a.out)))
    w("")
    mode = run.get("mode", "?")
    if mode == "quick":
        w("> **Quick smoke run** (`bench/run.sh --quick`): few clients and %s s steps. It shows that every "
          "server and scenario runs end to end; the numbers are **not** measurements." % params.get("duration_s", "?"))
        w("")
    elif mode == "check":
        w("> **Set-up check only** (`bench/run.sh --check`): servers configured, started and logged into; no load was run.")
        w("")
    if not run.get("have_bench", False) and mode != "check":
        w("> `tributary bench` was not available when this ran: only the set-up and login checks below were done.")
        w("")
    w("Run: %s UTC, mode `%s`, servers: %s." % (run.get("date_utc", "?"), mode, ", ".join(run.get("servers", [])) or "?"))
    w("")
    # `run.sh --servers X` replaces only X's results: say when each set was made.
    made = []
    for name in ALL:
        steps = read_jsonl(os.path.join(R, name + ".jsonl"))
        stamps = sorted(r["timestamp"] for r in steps if isinstance(r.get("timestamp"), str))
        if stamps:
            made.append("%s %s to %s" % (name, stamps[0], stamps[-1]))
    if made:
        w("Results in this directory, by server (first and last step, UTC): %s. The machine facts below "
          "are from the latest run." % "; ".join(made))
        w("")
    busy = run.get("cpu_busy_at_start_pct")
    if isinstance(busy, (int, float)) and busy >= 5:
        w("> **The machine was not idle**: just before the first server started, the cores were %.0f%% busy with "
          "other work, which then competed with the servers and the generator; latencies and CPU figures are "
          "disturbed. Re-run on a quiet machine before drawing conclusions." % busy)
        w("")

    # ---------------------------------------------------------------- machine
    m = env.get("machine", {})
    w("## Machine")
    w("")
    w("| | |")
    w("|---|---|")
    w("| cores (nproc) | %s |" % m.get("nproc"))
    w("| CPU | %s |" % m.get("cpu_model"))
    w("| RAM | %s GiB |" % m.get("ram_gib"))
    w("| kernel | %s (%s) |" % (m.get("kernel"), m.get("arch")))
    w("| OS | %s |" % m.get("os"))
    void = frozenset(v.get("timestamp") for v in read_jsonl(os.path.join(R, "void.jsonl")))
    probes = read_jsonl(os.path.join(R, "fsync.jsonl"))
    if probes:
        w("| disk: 4 KiB write + fsync in the run directory, %s times (p50 / p99 / max) | %s |" % (
            probes[0].get("count", "?"),
            "; ".join("%s %s / %s / %s ms" % (p.get("label", "?"), fmt(num(p, "p50_ms"), 2), fmt(num(p, "p99_ms"), 2),
                                               fmt(num(p, "max_ms"), 2)) for p in probes)))
    cpu = read_jsonl(os.path.join(R, "cpu.jsonl"))
    if cpu:
        w("| CPU speed: SHA-256 of a 64 KiB buffer 4,096 times (256 MiB, in cache), median of 5, ms on core %s / core %s "
          "(higher = a slower core: other guests can share its caches or hyper-thread sibling without any steal) | %s |" % (
              params.get("server_cpu", "?"), params.get("gen_cpu", "?"),
              "; ".join("%s %s / %s" % (p.get("label", "?"), fmt(num(p, "server_core_ms"), 0), fmt(num(p, "gen_core_ms"), 0))
                        for p in cpu)))
    w("| other CPU activity before the run | %s%% of both cores busy (2 s sample); load average at start %s, at end %s (the latter includes the benchmark) |"
      % (run.get("cpu_busy_at_start_pct", "?"), run.get("loadavg_at_start", "?"), env.get("loadavg_at_end", "?")))
    w("| pinning | server under test on core %s, load generator on core %s (`taskset -c`), the same for every server; one server at a time |"
      % (params.get("server_cpu", "?"), params.get("gen_cpu", "?")))
    w("| latency | counted from each stanza's scheduled time (open loop); senders wake on tokio's millisecond "
      "timer ticks, so every latency includes 0–1 ms of the generator's own, for every server alike "
      "(bench/README.md, \"Reading the numbers\") |")
    w("")
    w("## Versions")
    w("")
    w("| | |")
    w("|---|---|")
    for k, v in env.get("versions", {}).items():
        w("| %s | %s |" % (k, v))
    w("| load generator | `tributary bench` from the same binary as the Tributary server |")
    w("")

    # ---------------------------------------------------------------- set-up
    w("## Set-up as checked before any load")
    w("")
    w("Each server was logged into by `bench/xmpp_check.py` (standard-library Python) as the *last* "
      "registered user: STARTTLS, certificate verified against the shared CA, SASL SCRAM-SHA-1 "
      "(server signature verified), resource binding, a message to its own full JID.")
    w("")
    w("| server | check | TLS | SASL mechanisms after STARTTLS | SCRAM iterations | XEP-0198 offered | process: affinity, threads, fd limit |")
    w("|---|---|---|---|---|---|---|")
    for s in SERVERS:
        c = checks.get(s)
        p = srv.get(s) or {}
        proc = "core %s, %s threads, %s fds" % (p.get("cpu_affinity", "?"), p.get("threads", "?"), p.get("max_open_files", "?")) if p else "–"
        if not c:
            w("| %s | not run | | | | | |" % s)
            continue
        w("| %s | %s | %s %s | %s | %s | %s | %s |" % (
            s, "ok" if c.get("ok") else "**FAILED**: %s" % c.get("error"),
            c.get("tls_version", ""), c.get("tls_cipher", ""), ", ".join(c.get("mechanisms", [])),
            c.get("scram_iterations", ""), "yes" if c.get("sm_offered") else "no", proc))
    c = checks.get("mosquitto")
    p = srv.get("mosquitto") or {}
    w("| mosquitto | %s | TLS (mosquitto_pub/sub `--cafile`) | username/password (password_file) | – | – (MQTT) | %s |" % (
        "ok: QoS 1 PUBACK and delivery" if c and c.get("ok") else "not run",
        "core %s, %s threads, %s fds" % (p.get("cpu_affinity", "?"), p.get("threads", "?"), p.get("max_open_files", "?")) if p else "–"))
    w("")

    # ---------------------------------------------------------------- summary
    w("## Summary")
    w("")
    w("Max sustained rate = the highest offered rate at which p99 stayed under the limit with no message "
      "lost and the achieved rate at least %d%% of the offered one (steps stop at the first rate that "
      "fails). %s“–” = no step passed or the scenario was not run." % (
          round(min_ach * 100),
          "A step that failed was run again, up to %s tries in all, the same for every server; a rate counts "
          "as sustained if one of its tries was, and every try is listed in the tables below. " % params["step_tries"]
          if params.get("step_tries", 1) > 1 else ""))
    w("")
    w("In the step tables, *steal %%* is the time the hypervisor gave to other guests while the server's core "
      "(and the generator's) had work, as a share of that core's time over the measured window (`/proc/stat`): "
      "on a shared VM a try can fail because a core was taken away, which no server can help.%s" % void_rule(params))
    w("")
    w("| server | chat: max sustained msg/s (p99 < %g ms) | p99 there | CPU s / 100k msgs there | login: max sustained logins/s (p99 < %g ms) | idle: RSS per session | report: max sustained reports/s |"
      % (limit, login_limit))
    w("|---|---|---|---|---|---|---|")
    for s in SERVERS:
        if s not in present:
            continue
        bc = best(by(s, "chat"), limit, min_ach, void)
        bl = best(by(s, "login"), login_limit, min_ach, void)
        idle = by(s, "idle")
        per = rss_per_session(idle[-1]) if idle else None
        br = best(by(s, "report"), limit, min_ach, void) if s == "tributary" else None
        w("| %s | %s | %s | %s | %s | %s | %s |" % (
            s, rate(bc and bc.get("offered_rate")), fmt(bc and num(bc, "p99_ms"), 2) + (" ms" if bc else ""),
            fmt(bc and cpu_per_100k(bc), 2), rate(bl and bl.get("offered_rate")),
            (fmt(per, 1) + " kB") if per is not None else "–",
            rate(br and br.get("offered_rate")) if s == "tributary" else "n/a (Tributary only)"))
    w("")

    mq = by("mosquitto", "mqtt")
    if mq:
        bm = best(mq, limit, min_ach, void)
        w("Mosquitto (MQTT QoS 1 over TLS, publish → subscriber, acknowledged before any disk write): max "
          "sustained **%s msg/s**%s; see “MQTT (Mosquitto) beside Tributary's reports” below." % (
              rate(bm and bm.get("offered_rate")),
              " (p99 %s ms, %s CPU s / 100k msgs)" % (fmt(num(bm, "p99_ms"), 2), fmt(cpu_per_100k(bm), 2)) if bm else ""))
        w("")

    # ---------------------------------------------------------------- scenarios
    md_dir = os.path.dirname(os.path.abspath(a.out))

    def chart(name, what):
        """Link a PNG written by bench-plot (crates/bench/src/plot.rs) into the results directory."""
        path = os.path.relpath(os.path.join(os.path.abspath(R), name), md_dir).replace(os.sep, "/")
        if os.path.isfile(os.path.join(R, name)):
            w("![%s](%s)" % (what, path))
        else:
            w("_No chart: `%s` is missing (bench-plot did not run or failed; see bench/README.md)._" % path)
        w("")

    def scenario_section(sc, title, text, lim, unit, servers):
        w("## %s" % title)
        w("")
        w(text)
        w("")
        if any(by(s, sc) for s in servers):
            chart("latency-%s.png" % sc, "%s: p99 and p50 latency against offered rate per server" % sc)
        anyrows = False
        for s in servers:
            rs = by(s, sc)
            if not rs:
                continue
            anyrows = True
            b = best(rs, lim, min_ach, void)
            w("### %s" % s)
            w("")
            w("Max sustained: **%s %s** (p99 < %g ms, no loss)." % (rate(b and b.get("offered_rate")), unit, lim))
            w("")
            L.extend(rate_table(rs, lim, min_ach, unit, processor if sc == "report" else None, void=void))
            w("")
        if not anyrows:
            w("_Not run%s._" % ("" if run.get("have_bench") else ": `tributary bench` was not available"))
            w("")

    scenario_section(
        "chat", "Chat (one-to-one messages between online clients)",
        "%s clients logged in over STARTTLS with SCRAM-SHA-1%s send `<message type='chat'>` to each other at "
        "the offered total rate (open loop); latency is send → receipt at the addressee. Steps of %s s after "
        "%s s warm-up; offered rates %s msg/s." % (
            params.get("chat_clients", "?"), " and stream management" if params.get("chat_sm") else "",
            params.get("duration_s", "?"), params.get("warmup_s", "?"), params.get("chat_rates", "?")),
        limit, "msg/s", SERVERS)
    scenario_section(
        "login", "Login storm",
        "New connections at the offered rate, each doing TCP connect, STARTTLS (TLS 1.3, P-256 certificate), "
        "SCRAM-SHA-1 (4096 iterations on every server, computed by the generator), resource binding; latency is "
        "connect → bound. %s accounts; offered rates %s logins/s; sustained = p99 < %g ms." % (
            params.get("login_clients", "?"), params.get("login_rates", "?"), login_limit),
        login_limit, "logins/s", SERVERS)

    w("## Idle sessions")
    w("")
    w("%s sessions (each logged in with initial presence) held %s s; RSS of the server process before the "
      "first login and with all sessions open, and the difference per session. Sessions are opened at half the "
      "server's max sustained login rate from the login storm (capped at %s/s, at least %s/s), so that the "
      "figure measures sessions rather than a login backlog; the rate used is in the table." % (
          params.get("idle_clients", "?"), params.get("idle_duration_s", "?"),
          params.get("idle_connect_rate", "?"), params.get("idle_min_rate", "?")))
    w("")
    idle_rows = [(s, r) for s in SERVERS for r in by(s, "idle")]
    if idle_rows:
        w("| server | sessions asked | opened at /s | sessions held | lost / failed / conn. errors | login p50 / p99 ms | RSS before MB | RSS after MB | RSS per session kB | server CPU s during the hold |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for s, r in idle_rows:
            w("| %s | %s | %s | %s | %s / %s / %s | %s / %s | %s | %s | %s | %s |" % (
                s, fmt(r.get("clients")), rate(r.get("offered_rate")), fmt(r.get("count")),
                fmt(r.get("lost")), fmt(r.get("failed")), fmt(r.get("connection_errors")),
                fmt(num(r, "p50_ms"), 2), fmt(num(r, "p99_ms"), 2),
                fmt(rss_mb(r, "server_rss_before_kb")), fmt(rss_mb(r, "server_rss_after_kb")),
                fmt(rss_per_session(r), 1), fmt(num(r, "server_cpu_s"), 2)))
        w("")
        chart("idle-rss.png", "server RSS per idle session")
    else:
        w("_Not run%s._" % ("" if run.get("have_bench") else ": `tributary bench` was not available"))
    w("")

    scenario_section(
        "report", "Reports to a processor (Tributary only)",
        "%s collectors send reports to `collect.localhost`; Tributary commits each to its durable component "
        "queue, `tributary process` (pinned to the server's core too) stores it in SQLite and confirms; latency "
        "is send → confirmation. The processor's CPU seconds (warm-up included) are in the last column. "
        "All steps write into one processor database, which grows from step to step, and the processor's cost "
        "per report with it (bench/README.md, \"What bounds the report and drain rates\"). "
        "ejabberd and Prosody have no equivalent, so there is nothing to compare against." % params.get("report_clients", "?"),
        limit, "reports/s", ["tributary"])

    w("## Drain: a backlog delivered to a reconnecting processor (Tributary only)")
    w("")
    drains = by("tributary", "drain")
    if drains:
        w("%s collectors queue `drain_rate × drain_seconds` reports (%s/s for %s s) while `tributary process` is "
          "stopped; once the node has accepted (committed) them all, `tributary bench` starts the processor and "
          "times until every report is confirmed back to its sender (XEP-0184 receipt, sent after the processor's "
          "SQLite commit and routed after the node deleted the item). Confirmation times count from the "
          "processor's start; the server CPU is the node's during the drain." % (
              params.get("drain_clients", "?"), params.get("drain_rate", "?"), params.get("drain_seconds", "?")))
        w("")
        w("| backlog | accepted in | accepted/s | drained in | **drained/s** | confirmed | lost | duplicates | p50 / p99 confirmation after start | node CPU s during drain |")
        w("|---|---|---|---|---|---|---|---|---|---|")
        for r in drains:
            backlog, fill, drain = num(r, "accepted_count"), num(r, "fill_s"), num(r, "drain_s")
            w("| %s | %s s | %s | %s s | **%s** | %s | %s | %s | %s / %s ms | %s |" % (
                fmt(backlog, 0), fmt(fill, 2), rate(backlog / fill if backlog and fill else None),
                fmt(drain, 2), rate(num(r, "achieved_rate")), fmt(num(r, "count"), 0), fmt(num(r, "lost"), 0),
                fmt(num(r, "duplicates"), 0), fmt(num(r, "p50_ms"), 0), fmt(num(r, "p99_ms"), 0),
                fmt(num(r, "server_cpu_s"), 2)))
    else:
        w("_Not run._")
    w("")

    mqtt_rows = by("mosquitto", "mqtt")
    w("## MQTT (Mosquitto) beside Tributary's reports")
    w("")
    if mqtt_rows:
        w("%s MQTT 3.1.1 clients connect over TLS (the shared certificate, verified) with username and "
          "password and a clean session; each subscribes at QoS 1 to its own topic and publishes QoS 1 messages "
          "to the topic of another client chosen at random, at the offered total rate (open loop, the same "
          "schedule as chat). Latency is publish → delivered to the subscriber (the p50/p99 columns); the "
          "PUBACK column is publish → the broker's acknowledgement. Offered rates %s msg/s." % (
              params.get("mqtt_clients", "?"), params.get("mqtt_rates", "?")))
        w("")
        chart("latency-mqtt.png", "mqtt: p99 and p50 latency against offered rate")
        # The closest thing Tributary does: a report acknowledged by the node
        # and then processed. Side by side, with what each acknowledgement means.
        w("| server (scenario) | max sustained msg/s (p99 < %g ms, no loss) | p50 / p99 / p99.9 ms there | "
          "acknowledgement | ack p50 / p99 ms there | server CPU s / 100k there |" % limit)
        w("|---|---|---|---|---|---|")
        for label, rs, ack in (
                ("mosquitto (mqtt: publish → subscriber)", mqtt_rows,
                 "PUBACK, sent **before** anything is written to disk"),
                ("tributary (report: report → processed and confirmed)", by("tributary", "report"),
                 "XEP-0198 `<a h/>`, sent **after** the report is committed (fsync) to the node's queue")):
            if not rs:
                w("| %s | not run | | %s | | |" % (label, ack))
                continue
            b = best(rs, limit, min_ach, void)
            w("| %s | %s | %s | %s | %s | %s |" % (
                label, rate(b and b.get("offered_rate")),
                " / ".join(fmt(b and num(b, k), 2) for k in ("p50_ms", "p99_ms", "p999_ms")) if b else "–",
                ack,
                "%s / %s" % (fmt(num(b, "accepted_p50_ms"), 2), fmt(num(b, "accepted_p99_ms"), 2)) if b else "–",
                fmt(b and cpu_per_100k(b), 2)))
        w("")
        w("### mosquitto")
        w("")
        b = best(mqtt_rows, limit, min_ach, void)
        w("Max sustained: **%s msg/s** publish → subscriber (p99 < %g ms, no loss)." % (
            rate(b and b.get("offered_rate")), limit))
        w("")
        L.extend(rate_table(mqtt_rows, limit, min_ach, "msg/s", accepted="PUBACK", void=void))
        w("")
    else:
        w("_Not run%s._ The broker is installed, configured (loopback, plain port %s and TLS port %s with the "
          "shared certificate, the same benchN/bench accounts) and checked with a QoS 1 publish/subscribe over "
          "TLS on every run." % (
              "" if run.get("have_bench") and mode != "check" else
              (": set-up check only" if mode == "check" else ": `tributary bench` was not available"),
              params.get("ports", {}).get("mosquitto_mqtt", "?"), params.get("ports", {}).get("mosquitto_mqtts", "?")))
        w("")
    w("Durability differs from Tributary's and must be read next to any MQTT number: Mosquitto's persistence "
      "is a **periodic snapshot** of its in-memory state (`autosave_interval`, 1800 s as configured here and by "
      "default; also written at clean exit), and it sends the QoS 1 **PUBACK before anything is written to disk**. "
      "A crash loses every message acknowledged since the last snapshot. Tributary acknowledges a report only "
      "after it is committed to its SQLite queue.")
    w("")

    # ---------------------------------------------------------------- notes
    w("## What differs between the servers (and what was changed)")
    w("")
    notes = [
        "**TLS**: one self-signed P-256 certificate for `localhost` (SAN localhost, *.localhost, 127.0.0.1), generated "
        "once per run with openssl and given to every server; STARTTLS required everywhere; TLS 1.3 negotiated "
        "(see the set-up table). Direct TLS (XEP-0368) listeners are off.",
        "**SASL**: every load client uses SCRAM-SHA-1. Accounts store SCRAM keys on every server, all with 4096 "
        "iterations: Prosody's default (10000) was lowered with `default_iteration_count = 4096`; ejabberd set to "
        "`auth_password_format: scram` + `auth_scram_hash: sha` (Debian default is scram too); Tributary stores "
        "SHA-1 and SHA-256 keys (4096).",
        "**Rate shaping removed** so no client is throttled: ejabberd `shaper: none` on the c2s listener and "
        "`c2s_shaper: none` (Debian's default config shapes c2s to 3000 B/s); Prosody without `mod_limits` "
        "(Debian's default config enables it at 10 kb/s for c2s); Tributary keeps its default per-connection read "
        "shaping of 1 MiB/s (4 MiB burst), far above any scenario's per-client rate.",
        "**ejabberd queues and backlog**: `max_fsm_queue: 100000` (default 10000) so bursts do not kill sessions; "
        "listener `backlog: 1024` (default **5**, which turns a login storm into SYN retransmits); `cache_size` "
        "raised to twice the user count (default 1000, which made ejabberd shrink its auth cache constantly).",
        "**Stanza size limit** 262144 bytes on all three (ejabberd `max_stanza_size`, Prosody "
        "`c2s_stanza_size_limit`, Tributary `max_stanza_bytes`).",
        "**Stream management** (XEP-0198): ejabberd `mod_stream_mgmt` (resume_timeout 300), Prosody `mod_smacks` "
        "(built into 0.12), Tributary built in (resume_timeout 300). Carbons: ejabberd `mod_carboncopy` (Debian "
        "23.01's name), Prosody `mod_carbons`, Tributary built in. Also loaded: roster, disco, ping; ejabberd "
        "`mod_offline` and Tributary keep 1000 offline messages per user, Prosody's `mod_offline` has no limit.",
        "**Logging**: every server at warning level (ejabberd `loglevel: warning`, Prosody `min = \"warn\"`, "
        "Tributary `RUST_LOG=warn`), so per-connection info lines cost nothing anywhere.",
        "**Storage**: Tributary SQLite (WAL) in the run directory; ejabberd Mnesia (spool in the run directory); "
        "Prosody internal file storage. No MAM/archiving anywhere.",
        "**Execution model on the pinned core**: Prosody is one Lua process with one thread (epoll); ejabberd's "
        "BEAM schedulers follow the CPU affinity; Tributary's tokio runtime sizes its workers from the available "
        "parallelism (1 on the pinned core). Thread counts are in the set-up table.",
        "**Users** (`benchN@localhost`, password `bench`): registered once through each server's own tool "
        "(`tributary user add`, `ejabberdctl register`, `prosodyctl register`), then copied in bulk in each "
        "server's own storage format (Tributary: the SQLite `accounts` row; ejabberd: the Mnesia `passwd` record "
        "via `bench/ejabberd_clone_users.escript`; Prosody: the `accounts/benchN.dat` file). SCRAM keys depend only "
        "on password, salt and iterations, so all accounts share one salt; logins behave exactly as for separately "
        "registered accounts.",
        "**Processes run as**: Tributary as root; ejabberd as `ejabberd` (ejabberdctl su's to it); Prosody as "
        "`prosody` (it refuses root; started with `setpriv`); Mosquitto starts as root and drops to `mosquitto`.",
        "**CPU and RSS** are those of the server process (`--server-pid`: Tributary's `tributary serve`, ejabberd's "
        "`beam.smp`, Prosody's `lua` process, Mosquitto's `mosquitto` process); the Tributary processor in the report "
        "scenario is measured separately.",
    ]
    for s in present:
        c = checks.get(s) or {}
        if c and not c.get("sm_offered"):
            notes.append("**%s did not offer XEP-0198** after authentication: its chat runs have no stream management." % s)
    for n in notes:
        w("- " + n)
    w("")

    # ---------------------------------------------------------------- commands
    w("## Exact commands")
    w("")
    w("Parameters: `%s`" % json.dumps({k: v for k, v in params.items() if k != "ports"}))
    w("")
    w("Ports (127.0.0.1): `%s`" % json.dumps(params.get("ports", {})))
    w("")
    for s in ALL:
        path = os.path.join(R, s + ".commands.txt")
        try:
            cmds = open(path).read().strip()
        except OSError:
            continue
        w("### %s" % s)
        w("")
        w("```sh")
        w(cmds)
        w("```")
        w("")
    out = "\n".join(L).rstrip() + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(out)
    print("wrote %s" % a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
