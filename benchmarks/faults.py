"""Faults survived, bad inputs rejected, untrusted checkpoints inert (tiny preset, CPU).

    python benchmarks/faults.py [--trials 10] [--seed 0]

kill_trials              SIGKILLs at a random moment of a run (classifier training with the
kill_trials_recovered    FeatureEvolution callback, generator training, visualize.py), then the
                         same command again (`ckpt_path=last` for training): killed runs whose
                         re-run completed with complete outputs (target: all).  The moment is
                         drawn from 10-95% of an uninterrupted run's time; a run that ends
                         first is started afresh with an earlier kill (trials_never_killed: none)
frames_lost              evolution frames of the schedule missing after the resume (target 0)
frames_duplicated        frames recorded twice, or on disk without a record (target 0)
truncated_artifacts      outputs under their final names that do not read back whole, plus
                         temporary files left behind, after the re-runs (target 0)
bad_inputs_tried         command lines of train.py / visualize.py with one bad input each
bad_inputs_clean         of those, the ones that printed one `featvis: error:` line naming the
                         value and what was expected, exited non-zero and wrote no outputs
                         (wandb online without network: logged offline instead, exit 0, fast)
damaged_inputs_tried     files that exist but are damaged: a zero-byte checkpoint, one of a newer
damaged_inputs_clean     featvis format, DeePSiM weights with a missing or an extra key, a direction
                         or MACO magnitude of the wrong shape, a damaged evolution.json on resume
                         (clean as bad_inputs_clean), RGBA, grey and 16-bit images among RGB ones
                         (clean: converted, one log line counting them, exit 0)
malicious_ckpt_executed  crafted checkpoints whose pickle would create a file, given to every
                         loader: the files that appeared (target 0)
enospc_trials            a full disk (a 32 MB tmpfs filled by a ballast file) while a checkpoint, an
enospc_recovered         evolution frame, evolution.json (train.py), grid.png or metrics.json
                         (visualize.py) is written, in turn: the trials whose error was one line
                         naming the file and the space needed (exit 2, nothing torn) and whose re-run
                         once the ballast is gone completed with no frame lost or repeated
concurrent_runs_tried    three train.py pipelines started together on one stages folder, two of one
concurrent_runs_clean    config and one of another (encoder given, G and the DAE prior trained), and
                         two visualize.py into one run dir: the trials where every stage folder was
                         trained by one run (the other of its config waited and reused it), every run
                         finished and nothing is torn; the second visualize.py refused in one line
ddp_rank_kill_trials     a 2-process DDP classifier with feature evolution, rank 0 or 1 SIGKILLed
ddp_rank_kill_recovered  0-3 s after its first checkpoint: the survivor ends within 30 s with one
ddp_rank_end_max_s       line naming the lost rank, and `ckpt_path=last` resumes with no frame lost
                         or repeated (max_s: the slowest end after a kill)
soak_*                   a tiny classifier trained under FeatureEvolution with a frame after every
                         step (`--soak-frames`, pixel AM, one sampler step, reports rebuilt live):
                         soak_rss_growth_mb_per_100_frames (target <= 20), soak_frame_time_slope
                         (ms per frame of a frame's own work, the rebuild aside; target ~0),
                         soak_fd_growth (open file descriptors; target 0), and
                         soak_report_time_per_frame_ratio (a rebuild's time per frame read at all
                         frames over that at a quarter of them: ~1 is linear, ~4 quadratic)

The tests run one trial per stage and every bad input (tests/test_faults.py,
tests/test_bad_inputs.py); this script runs `--trials` per stage.  The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the fault tables live in tests/

from tests.contention import concurrent_pipelines, ddp_rank_kills, shared_run_dir  # noqa: E402
from tests.soak import print_table as print_soak, soak  # noqa: E402
from tests.full_disk import NoTmpfs, enospc_trials, print_table as print_enospc  # noqa: E402
from tests.faults import (bad_input_counts, broken_inputs, kill_trials, malicious_loads, run_bad_inputs,  # noqa: E402
                          train_checkpoints)


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="kills per stage")
    parser.add_argument("--enospc-trials", type=int, default=5, help="full-disk trials (one writer each, in turn)")
    parser.add_argument("--contention-trials", type=int, default=2, help="trials of the concurrent runs")
    parser.add_argument("--ddp-trials", type=int, default=4, help="DDP rank kills (alternating ranks 0 and 1)")
    parser.add_argument("--soak-frames", type=int, default=200, help="frames of the feature-evolution soak")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    out = Path(tempfile.mkdtemp(prefix="featvis-bench-faults-"))
    print(f"runs in {out}")
    inputs = broken_inputs(out / "inputs", train_checkpoints(out / "fixtures"))
    evil = {k: inputs[k] for k in ("evil", "evil_record", "evil_weights")}
    marker = Path(inputs["evil"]).parent / "PWNED"

    bad = run_bad_inputs(inputs, out)
    refused = malicious_loads(evil)
    kills = kill_trials(inputs, out, args.trials, args.seed)
    try:
        enospc = enospc_trials(inputs, out / "enospc", args.enospc_trials, args.seed)
    except NoTmpfs as err:
        print(f"full-disk trials skipped: {err}")
        enospc = []
    contention = []
    for trial in range(args.contention_trials):
        folder = out / f"contention_{trial}"
        folder.mkdir()
        contention += [{"trial": trial, "what": "3 pipelines", **concurrent_pipelines(inputs, folder)},
                       {"trial": trial, "what": "2 visualize.py", **shared_run_dir(inputs, folder)}]
    ddp = ddp_rank_kills(inputs, out, args.ddp_trials, args.seed)
    soaked = soak(out / "soak", frames=args.soak_frames, seed=args.seed)  # last: it sets torch to one thread

    print(f"\n{'bad input':<38}{'clean':>6}{'s':>6}  error line / problem")
    for row in bad:
        print(f"{row['case']:<38}{'yes' if row['clean'] else 'NO':>6}{row['seconds']:>6.1f}  {row['why'][:110]}")
    print(f"\n{'loader/crafted checkpoint':<38}{'refused':>8}")
    for name, ok in refused.items():
        print(f"{name:<38}{'yes' if ok else 'NO':>8}")
    print(f"\n{'stage':<22}{'trial':>6}{'kill at s':>10}{'of s':>7}{'killed':>8}{'recovered':>10}{'lost':>6}{'dup':>5}"
          f"{'trunc':>6}")
    for i, row in enumerate(kills):
        print(f"{row['stage']:<22}{i % args.trials:>6}{row['delay']:>10.1f}{row['reference_s']:>7.1f}"
              f"{'yes' if row['killed'] else 'no':>8}{'yes' if row['recovered'] else 'NO':>10}{row['frames_lost']:>6}"
              f"{row['frames_duplicated']:>5}{row['truncated']:>6}")
        for problem in row["problems"]:
            print(f"    {problem}")
    print_enospc(enospc)
    print(f"\n{'concurrent runs':<18}{'trial':>6}{'clean':>6}  problems")
    for row in contention:
        print(f"{row['what']:<18}{row['trial']:>6}{'yes' if row['clean'] else 'NO':>6}  {'; '.join(row['problems'])[:110]}")
    print(f"\n{'DDP rank killed':<18}{'ended s':>8}{'named':>6}{'recovered':>10}{'lost':>6}{'dup':>5}{'trunc':>6}")
    for row in ddp:
        print(f"{'rank ' + str(row['victim']):<18}{row['ended_s']:>8.1f}{'yes' if row['named'] else 'NO':>6}"
              f"{'yes' if row['recovered'] else 'NO':>10}{row['frames_lost']:>6}{row['frames_duplicated']:>5}"
              f"{row['truncated']:>6}")
        for problem in row["problems"]:
            print(f"    {problem}")
    print(f"\nfeature-evolution soak, {args.soak_frames} frames")
    print_soak(soaked)
    return {"kill_trials": sum(r["killed"] for r in kills),
            "kill_trials_recovered": sum(r["killed"] and r["recovered"] for r in kills),
            "trials_never_killed": sum(not r["killed"] for r in kills),  # ended before 4 ever earlier kills
            "frames_lost": sum(r["frames_lost"] for r in kills),
            "frames_duplicated": sum(r["frames_duplicated"] for r in kills),
            "truncated_artifacts": sum(r["truncated"] for r in kills),
            **bad_input_counts(bad),
            "malicious_ckpt_loads_refused": f"{sum(refused.values())}/{len(refused)}",
            "malicious_ckpt_executed": int(marker.exists()),
            "enospc_trials": len(enospc), "enospc_recovered": sum(r["recovered"] and r["clean_error"] for r in enospc),
            "concurrent_runs_tried": len(contention), "concurrent_runs_clean": sum(r["clean"] for r in contention),
            "ddp_rank_kill_trials": sum(r["killed"] for r in ddp),
            "ddp_rank_kill_recovered": sum(r["killed"] and r["recovered"] for r in ddp),
            "ddp_rank_end_max_s": max((r["ended_s"] for r in ddp), default=None),
            **{k: soaked[k] for k in ("soak_rss_growth_mb_per_100_frames", "soak_frame_time_slope", "soak_fd_growth",
                                      "soak_objects_per_frame", "soak_report_time_per_frame_ratio")}}


if __name__ == "__main__":
    print(json.dumps(main()))
