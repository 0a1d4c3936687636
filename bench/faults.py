#!/usr/bin/env python3
"""Fault trials for fanout, run by bench/faults.sh (and by CI). Each trial breaks something
on purpose and checks that nothing was lost: every shard committed exactly once, outputs
byte-identical to a clean run, no half-written file, and a clear error when a job fails.

  kill    SIGKILL of the coordinator at random moments of a 2,000-shard job, then --resume
  s3      the S3 server frozen, then killed and restarted, for 5 s in the middle of a job
  disk    the staging disk full (a small tmpfs), then the job finished with redrive
  guests  hostile guests with default limits; the coordinator's memory stays bounded

Prints one line per trial and a summary; exits 1 if any trial lost or leaked anything.
"""

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

FANOUT = os.environ["FANOUT"]
MISBEHAVE = os.environ["MISBEHAVE_WASM"]
RESULTS = []


def say(*parts):
    print(*parts, flush=True)


def record(trial, ok, detail):
    RESULTS.append((trial, ok, detail))
    say(f"{'PASS' if ok else 'FAIL'}  {trial}: {detail}")


def fanout(args, cwd, env=None, check=None, timeout=600):
    """Runs fanout; the result also carries `rss_mb`, its peak resident memory."""
    rss_file = os.path.join(cwd, ".rss")
    run = subprocess.run(["/usr/bin/time", "-f", "%M", "-o", rss_file, FANOUT, *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=timeout)
    run.rss_mb = int(open(rss_file).read().split()[-1]) / 1024
    os.remove(rss_file)
    if check is not None and run.returncode != check:
        raise AssertionError(f"fanout {' '.join(args)} exited {run.returncode}:\n{run.stderr[-3000:]}")
    return run


def tree(root):
    """rel path -> sha256 of every output (the manifest left out); half-written files flagged."""
    files = {}
    for base, dirs, names in os.walk(root):
        if os.path.relpath(base, root).split(os.sep)[0] == "_fanout":
            continue
        for name in names:
            if name.startswith(".fanout-tmp-"):
                files["HALF-WRITTEN " + name] = ""
                continue
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return files


def journal(dest):
    """All commit records of the one job in dest, in write order."""
    jobs = sorted(os.listdir(os.path.join(dest, "_fanout")))
    shards = os.path.join(dest, "_fanout", jobs[-1], "shards")
    records = []
    for segment in sorted(os.listdir(shards)):
        with open(os.path.join(shards, segment)) as f:
            records.extend(json.loads(line) for line in f if line.strip())
    return records


def committed_once(records, count):
    ok = {}
    for r in records:
        if r["status"] == "ok":
            ok[r["shard"]] = ok.get(r["shard"], 0) + 1
    missing = count - len(ok)
    doubles = sum(1 for n in ok.values() if n > 1)
    return missing, doubles


def make_inputs(folder, count, command):
    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        with open(os.path.join(folder, f"f{i:05}"), "w") as f:
            f.write(command)


# ---------------------------------------------------------------- kill and resume

def trial_kill(work, trials, shards, seed):
    rng = random.Random(seed)
    make_inputs(os.path.join(work, "in"), shards, "work 2")
    job = ["run", "--input", "in", "--function", MISBEHAVE, "--max-workers", "2", "--quiet"]
    started = time.monotonic()
    fanout(job + ["--output", "clean"], work, check=0)
    clean_seconds = time.monotonic() - started
    clean = tree(os.path.join(work, "clean"))
    assert len(clean) == shards
    say(f"      clean run: {shards} shards in {clean_seconds:.2f} s; seed {seed}")
    for trial in range(1, trials + 1):
        dest = f"killed{trial}"
        moment = rng.uniform(0.02, 0.95) * clean_seconds
        child = subprocess.Popen([FANOUT, *job, "--output", dest], cwd=work)
        time.sleep(moment)
        child.send_signal(signal.SIGKILL)
        child.wait()
        before = len(tree(os.path.join(work, dest)))
        resumed = fanout(job + ["--output", dest, "--resume", "--json"], work)
        outputs = tree(os.path.join(work, dest))
        missing, doubles = committed_once(journal(os.path.join(work, dest)), shards)
        summary = json.loads(resumed.stdout) if resumed.returncode == 0 else {}
        lost = missing + doubles + len([k for k in outputs if k.startswith("HALF")])
        ok = resumed.returncode == 0 and outputs == clean and lost == 0
        record(
            f"kill {trial:2}",
            ok,
            f"SIGKILL at {moment:.2f} s ({before} outputs there), resume exit {resumed.returncode}, "
            f"{summary.get('shards', {}).get('skipped', '?')} skipped, outputs identical: {outputs == clean}, "
            f"missing {missing}, committed twice {doubles}",
        )


# ---------------------------------------------------------------- S3 outage

def s3_env():
    keys = ["AWS_ENDPOINT_URL", "FANOUT_TEST_BUCKET", "FANOUT_TEST_S3_PID", "FANOUT_TEST_S3_DIR"]
    return all(k in os.environ for k in keys)


def garage_command(state_dir):
    creds = dict(line.strip().split("=", 1) for line in open(os.path.join(state_dir, "credentials")) if "=" in line)
    env = dict(os.environ, GARAGE_DEFAULT_ACCESS_KEY=creds["KEY_ID"], GARAGE_DEFAULT_SECRET_KEY=creds["SECRET_KEY"],
               GARAGE_DEFAULT_BUCKET="fanout-test", RUST_LOG="garage=warn")
    cmdline = open(f"/proc/{os.environ['FANOUT_TEST_S3_PID']}/cmdline", "rb").read().split(b"\0")
    return [c.decode() for c in cmdline if c], env


def s3_answers(timeout=30):
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(os.environ["AWS_ENDPOINT_URL"], timeout=1)
            return True
        except urllib.error.HTTPError:
            return True  # it answers (403 for an unsigned request)
        except Exception:
            time.sleep(0.1)
    return False


def count_s3(prefix):
    import boto3
    from botocore.config import Config
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=Config(s3={"addressing_style": "path"}))
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=os.environ["FANOUT_TEST_BUCKET"], Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def trial_s3(work, mode):
    bucket = os.environ["FANOUT_TEST_BUCKET"]
    prefix = f"faults-{mode}-{os.getpid()}-{int(time.time())}/"
    folder = os.path.join(work, f"s3in-{mode}")
    make_inputs(folder, 300, "work 20")
    dest = f"s3://{bucket}/{prefix}out/"
    job = ["run", "--input", folder, "--function", MISBEHAVE, "--output", dest, "--quiet", "--json"]
    child = subprocess.Popen([FANOUT, *job], cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.5)
    pid = int(os.environ["FANOUT_TEST_S3_PID"])
    if mode == "freeze":
        os.kill(pid, signal.SIGSTOP)
        time.sleep(5)
        os.kill(pid, signal.SIGCONT)
    else:
        command, env = garage_command(os.environ["FANOUT_TEST_S3_DIR"])
        os.kill(pid, signal.SIGKILL)
        time.sleep(5)
        log = open(os.path.join(os.environ["FANOUT_TEST_S3_DIR"], "server.log"), "a")
        server = subprocess.Popen(command, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        os.environ["FANOUT_TEST_S3_PID"] = str(server.pid)
        assert s3_answers(), "garage did not come back"
    out, err = child.communicate(timeout=600)
    first = child.returncode
    redrive = None
    if first != 0:
        redrive = fanout(["redrive", dest, "--quiet", "--json"], work)
    status = json.loads(fanout(["status", dest, "--json"], work, check=0).stdout)
    outputs = [k for k in count_s3(prefix + "out/") if "/_fanout/" not in "/" + k]
    ok = status["shards"]["ok"] == 300 and len(outputs) == 300 and (first == 0 or redrive.returncode == 0)
    how = "completed" if first == 0 else f"failed (exit {first}: {err.strip().splitlines()[-1] if err.strip() else ''}), redrive exit {redrive.returncode}"
    record(f"s3 {mode}", ok, f"server {'frozen' if mode == 'freeze' else 'killed and restarted'} for 5 s: job {how}; "
                             f"{status['shards']['ok']}/300 committed, {len(outputs)} outputs")


def trial_s3_big_output(work):
    """A 1 GiB output goes up in multipart parts, read from disk: never in memory whole."""
    bucket = os.environ["FANOUT_TEST_BUCKET"]
    prefix = f"faults-big-{os.getpid()}-{int(time.time())}/"
    folder = os.path.join(work, "bigin")
    os.makedirs(folder)
    with open(os.path.join(folder, "big"), "w") as f:
        f.write(f"bytes {1 << 30}")
    dest = f"s3://{bucket}/{prefix}"
    run = fanout(["run", "--input", folder, "--function", MISBEHAVE, "--output", dest, "--max-bytes", "2GiB", "--json"], work)
    import boto3
    from botocore.config import Config
    s3 = boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"], config=Config(s3={"addressing_style": "path"}))
    head = s3.head_object(Bucket=bucket, Key=prefix + "big.big")
    parts = head.get("ETag", "").strip('"').rpartition("-")[2]
    ok = run.returncode == 0 and head["ContentLength"] == 1 << 30 and run.rss_mb < 200
    record("s3 1 GiB output", ok, f"exit {run.returncode}, {head['ContentLength']} bytes in S3 in {parts} parts, "
                                  f"coordinator max RSS {run.rss_mb:.0f} MB")


# ---------------------------------------------------------------- staging disk full

def trial_disk(work):
    mount = os.path.join(work, "small-disk")
    os.makedirs(mount)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mount], capture_output=True, text=True)
    if mounted.returncode != 0:
        record("disk full", False, f"cannot mount a tmpfs (needs root): {mounted.stderr.strip()}")
        return
    try:
        folder = os.path.join(work, "diskin")
        make_inputs(folder, 6, "bytes 20000000")  # 20 MB of output each, 6 at once: more than 24 MiB
        make_inputs(os.path.join(folder, "small"), 10, "work 5")
        job = ["run", "--input", folder, "--function", MISBEHAVE, "--output", "diskout", "--staging", mount,
               "--attempts", "2", "--backoff", "50ms", "--json"]
        first = fanout(job, work)
        summary = json.loads(first.stdout) if first.stdout.strip() else {}
        errors = [f["error"] for f in summary.get("failures", [])]
        clear = bool(errors) and all("is full" in e for e in errors)
        if not clear:
            say("      errors: " + " | ".join(errors))
        redrive = fanout(["redrive", "diskout", "--json"], work)
        status = json.loads(fanout(["status", "diskout", "--json"], work, check=0).stdout)
        outputs = tree(os.path.join(work, "diskout"))
        ok = first.returncode == 1 and clear and redrive.returncode == 0 and status["shards"]["ok"] == 16 and len(outputs) == 16
        record("disk full", ok, f"first run exit {first.returncode} with {len(errors)} failed shards, errors name the full disk: {clear} "
                                f"({errors[0][:140] if errors else 'none'}...); redrive with room: exit {redrive.returncode}, "
                                f"{status['shards']['ok']}/16 committed")
    finally:
        subprocess.run(["umount", mount])


# ---------------------------------------------------------------- hostile guests

GUESTS = {
    "trap": ("trap", "failed", "trap"),
    "exit7": ("exit 7", "failed", "exit"),
    "loop": ("loop", "failed", "timeout"),
    "sleep": ("sleep", "failed", "timeout"),
    "alloc4g": ("alloc", "failed", "oom"),
    "bigout": ("bytes 300000000", "failed", "error"),
    "files": ("files 10000", "failed", "error"),
    "symlink": ("symlink", "failed", "error"),
    "passwd": ("passwd", "failed", "exit"),
    "dotdot": ("dotdot", "failed", "exit"),
    "awskeys": ("env AWS_SECRET_ACCESS_KEY", "failed", "exit"),
    "stdoutflood": ("stdout 200000000", "ok", "ok"),
    "ok1": ("ok", "ok", "ok"),
    "ok2": ("ok", "ok", "ok"),
}


def trial_guests(work):
    folder = os.path.join(work, "guests")
    os.makedirs(folder)
    for name, (command, _, _) in GUESTS.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(command)
    secret = "AKIA-fault-trial-secret-5b1f"
    env = dict(os.environ, AWS_SECRET_ACCESS_KEY=secret, AWS_ACCESS_KEY_ID="AKIAFAULTTRIAL")
    run = fanout(["run", "--input", folder, "--function", MISBEHAVE, "--output", "guestout", "--timeout", "10s",
                  "--max-bytes", "100MiB", "--attempts", "1", "--max-workers", "2"], work, env=env)
    rss_mb = run.rss_mb
    jobs = os.listdir(os.path.join(work, "guestout", "_fanout"))
    job = os.path.join(work, "guestout", "_fanout", jobs[0])
    plan = {}
    with open(os.path.join(job, "plan", "000000.jsonl")) as f:
        for line in f:
            shard = json.loads(line)
            plan[str(shard["id"])] = shard["objects"][0]["key"]
    import csv
    rows = {plan[r["shard"]]: r for r in csv.DictReader(open(os.path.join(job, "report.csv")))}
    wrong = [f"{name}: {rows[name]['status']}/{rows[name]['outcome']}" for name, (_, status, outcome) in GUESTS.items()
             if (rows[name]["status"], rows[name]["outcome"]) != (status, outcome)]
    leaked = []
    for base, _, names in os.walk(os.path.join(work, "guestout")):
        for name in names:
            data = open(os.path.join(base, name), "rb").read()
            if secret.encode() in data or b"root:x:0:0" in data:
                leaked.append(os.path.relpath(os.path.join(base, name), work))
    # a guest's memory is in this process too: 2 workers x 256 MiB, plus fanout itself
    bounded = rss_mb < 2 * 256 + 200
    ok = run.returncode == 1 and not wrong and not leaked and bounded
    record("guests", ok, f"{len(GUESTS)} guests, exit {run.returncode}, wrong outcomes {wrong or 'none'}, "
                         f"leaks {leaked or 'none'}, coordinator max RSS {rss_mb:.0f} MB")
    # A stdin flood: a 256 MiB record shard streamed to a guest; the coordinator stays small.
    flood = os.path.join(work, "flood.txt")
    with open(flood, "wb") as f:
        line = b"x" * 1023 + b"\n"
        for _ in range(256 * 1024):
            f.write(line)
    wordcount = MISBEHAVE.replace("misbehave", "wordcount")
    run = fanout(["run", "--input", flood, "--function", wordcount, "--output", "floodout", "--shard", "chunk=256MiB", "--json"], work)
    parts = [n for n in os.listdir(os.path.join(work, "floodout")) if n.startswith("part-")]
    counted = json.load(open(os.path.join(work, "floodout", parts[0]))) if parts else {}
    rss_mb = run.rss_mb
    ok = run.returncode == 0 and counted.get("lines") == 256 * 1024 and rss_mb < 200
    record("stdin flood", ok, f"256 MiB on a guest's stdin: exit {run.returncode}, lines counted {counted.get('lines')}, "
                              f"coordinator max RSS {rss_mb:.0f} MB")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--shards", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--only", nargs="*", default=["kill", "s3", "disk", "guests"])
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="fanout-faults.")
    try:
        if "kill" in args.only:
            trial_kill(work, args.trials, args.shards, args.seed)
        if "s3" in args.only:
            if s3_env():
                trial_s3(work, "freeze")
                trial_s3(work, "restart")
                trial_s3_big_output(work)
            else:
                record("s3", False, "no S3 test server in the environment")
        if "disk" in args.only:
            trial_disk(work)
        if "guests" in args.only:
            trial_guests(work)
    finally:
        subprocess.run(["umount", os.path.join(work, "small-disk")], capture_output=True)
        shutil.rmtree(work, ignore_errors=True)
    passed = sum(1 for _, ok, _ in RESULTS if ok)
    say(f"\nfaults: {passed}/{len(RESULTS)} trials passed; kill-and-resume trials passed: "
        f"{sum(1 for t, ok, _ in RESULTS if ok and t.startswith('kill'))}/{sum(1 for t, _, _ in RESULTS if t.startswith('kill'))}; "
        f"guests tried: {len(GUESTS) + 1}")
    sys.exit(0 if passed == len(RESULTS) else 1)


if __name__ == "__main__":
    main()
