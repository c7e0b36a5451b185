"""Mean ± sample std over seeds of experiments.best_of_n_compare's summary.json files.

python bon_agg.py seed0/summary.json seed1/summary.json seed2/summary.json
"""

import json
import pathlib
import statistics
import sys


def fmt(values):
    if len(values) == 1:
        return f"{values[0]:.3f}"
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values):.3f}"


def main(paths):
    runs = [json.loads(pathlib.Path(path).read_text()) for path in paths]
    tables = [run["table"] for run in runs]
    methods = list(tables[0])
    ns = list(tables[0][methods[0]])
    print("| method | " + " | ".join(f"N={n}" for n in ns) + " |")
    print("|---|" + "---:|" * len(ns))
    for method in methods:
        cells = " | ".join(fmt([table[method][n] for table in tables]) for n in ns)
        print(f"| {method} | {cells} |")
    for key in ("implicit_labels", "math_shepherd_labels", "heldout", "timings_s"):
        numbers = [k for k, v in runs[0][key].items() if isinstance(v, (int, float))]
        print(key, {k: fmt([run[key][k] for run in runs]) for k in numbers})
    last = {k: fmt([run["training"][k][1] for run in runs])
            for k in ("implicit_ce_first_last", "math_shepherd_ce_first_last")}  # fmt: skip
    print("training (last loss)", last)


if __name__ == "__main__":
    main(sys.argv[1:])
