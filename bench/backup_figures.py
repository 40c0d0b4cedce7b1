"""Figures of bench/backup.sh.

  backup_figures.py rpo WRITES ARCHIVED FIG LABEL   the RPO under writes (steady: a
                                              light writer alone; heavy: with pgbench)
  backup_figures.py compare POSIX_FIG S3_FIG  side by side, with s3/posix

WRITES: "epoch|lsn" per commit; ARCHIVED: "epoch|last_archived_wal" once a
second; FIG: key=value lines (one repository's figures, appended to by rpo).
"""
import statistics
import sys


def lsn(s):
    hi, lo = s.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def rpo(writes_file, archived_file, fig_file, label="steady"):
    """The RPO at each sample: now minus the newest commit inside an archived segment."""
    writes = []
    for line in open(writes_file):
        p = line.strip().split("|")
        if len(p) == 2:
            writes.append((float(p[0]), lsn(p[1])))
    out, last = [], None
    for line in open(archived_file):
        t, seg = line.strip().split("|", 1)
        base = seg.split(".")[0]
        if len(base) == 24 and (len(seg) == 24 or seg.endswith(".partial")):
            # The end of that segment (16 MiB segments).
            last = (int(base[8:16], 16) << 32) + (int(base[16:24], 16) + 1) * 0x1000000
        if last is None:
            continue
        done = [a for a, w in writes if w < last and a <= float(t)]
        if done:
            out.append(float(t) - max(done))
    if not out:
        print(f"RPO under {label} writes: no sample ({len(writes)} commits, nothing archived while sampled)")
        return
    out.sort()
    p50, p95 = statistics.median(out), out[max(int(len(out) * 0.95) - 1, 0)]
    print(f"RPO under {label} writes ({len(writes)} commits, {len(out)} samples 1/s, archive_timeout 60 s: PostgreSQL switches at 55 s): "
          f"p50 {p50:.1f} s, p95 {p95:.1f} s, max {out[-1]:.1f} s")
    with open(fig_file, "a") as f:
        key = "rpo" if label == "steady" else f"rpo_{label}"
        f.write(f"{key}_p50={p50:.1f}\n{key}_p95={p95:.1f}\n{key}_max={out[-1]:.1f}\n")


ROWS = [  # key, label, unit, whether the ratio is printed
    ("first_backup", "first full backup, after provisioning succeeded", "s", False),
    ("rpo_p50", "RPO under steady writes, p50", "s", True),
    ("rpo_max", "RPO under steady writes, max", "s", False),
    ("rpo_heavy_p50", "RPO under pgbench -c 2, p50", "s", True),
    ("rpo_heavy_max", "RPO under pgbench -c 2, max", "s", False),
    ("backup_mbs", "full backup (pgBackRest start to stop)", "MB/s", True),
    ("backup_s", "full backup duration", "s", False),
    ("backup_request", "pgcell backup, request to done", "s", False),
    ("restore", "restore (clone of the latest), request to succeeded", "s", True),
    ("copy", "  of which copy (pgbackrest restore)", "s", False),
    ("replay", "  of which WAL replay to promotion", "s", False),
]


def compare(posix_file, s3_file):
    def load(f):
        return dict(line.strip().split("=", 1) for line in open(f) if "=" in line)

    p, s = load(posix_file), load(s3_file)
    print(f"\n{'## side by side':<60}{'posix':>8}{'s3':>8}  s3/posix")
    for key, label, unit, ratio in ROWS:
        a, b = p.get(key, "-"), s.get(key, "-")
        r = ""
        if ratio and a != "-" and b != "-" and float(a) > 0:
            r = f"{float(b) / float(a):.2f}"
        print(f"{label + ' (' + unit + ')':<60}{a:>8}{b:>8}  {r}")


if __name__ == "__main__":
    if sys.argv[1:2] == ["rpo"] and len(sys.argv) in (5, 6):
        rpo(*sys.argv[2:])
    elif sys.argv[1:2] == ["compare"] and len(sys.argv) == 4:
        compare(*sys.argv[2:])
    else:
        sys.exit(__doc__)
