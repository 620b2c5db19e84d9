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
malicious_ckpt_executed  crafted checkpoints whose pickle would create a file, given to every
                         loader: the files that appeared (target 0)

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

from tests.faults import broken_inputs, kill_trials, malicious_loads, run_bad_inputs, train_checkpoints  # noqa: E402


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=10, help="kills per stage")
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
    return {"kill_trials": sum(r["killed"] for r in kills),
            "kill_trials_recovered": sum(r["killed"] and r["recovered"] for r in kills),
            "trials_never_killed": sum(not r["killed"] for r in kills),  # ended before 4 ever earlier kills
            "frames_lost": sum(r["frames_lost"] for r in kills),
            "frames_duplicated": sum(r["frames_duplicated"] for r in kills),
            "truncated_artifacts": sum(r["truncated"] for r in kills),
            "bad_inputs_tried": len(bad), "bad_inputs_clean": sum(r["clean"] for r in bad),
            "malicious_ckpt_loads_refused": f"{sum(refused.values())}/{len(refused)}",
            "malicious_ckpt_executed": int(marker.exists())}


if __name__ == "__main__":
    print(json.dumps(main()))
