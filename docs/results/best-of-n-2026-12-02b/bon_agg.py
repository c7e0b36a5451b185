"""Mean ± sample std over seeds of experiments.best_of_n_compare's summary.json files."""
import json, sys, statistics as S
paths = sys.argv[1:]
runs = [json.load(open(p)) for p in paths]
table = [r["table"] for r in runs]
def fmt(xs):
    return f"{S.mean(xs):.3f} ± {S.stdev(xs):.3f}" if len(xs) > 1 else f"{xs[0]:.3f}"
first = table[0]
if isinstance(first, dict):
    methods = list(first)
    ns = list(first[methods[0]])
    print("| method | " + " | ".join(f"N={n}" for n in ns) + " |")
    print("|---|" + "---:|" * len(ns))
    for m in methods:
        print(f"| {m} | " + " | ".join(fmt([t[m][n] for t in table]) for n in ns) + " |")
else:
    print(json.dumps(first)[:500])
for key in ("implicit_labels", "math_shepherd_labels", "heldout", "timings_s"):
    vals = {k: [r[key][k] for r in runs] for k, v in runs[0][key].items() if isinstance(v, (int, float))}
    print(key, {k: fmt(v) for k, v in vals.items()})
print("training", {k: fmt([r["training"][k][i] for r in runs]) for k in ("implicit_ce_first_last", "math_shepherd_ce_first_last") for i in (1,)})
