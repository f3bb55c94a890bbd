#!/usr/bin/env bash
# The whole STS Fusion job on the bundled sample, as a batch run of three `qgis_process` calls:
#   resources/sample/*.tif -> Build MDD stack -> Train fusion model -> Fuse time series
# Run by `make demo` (which installs QGIS, the venv and the plugin link first and sources
# scripts/env.sh). Everything is written to demo_output/; the fused GeoTIFFs open in QGIS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
[ -n "${STSFUSION_ROOT:-}" ] || source scripts/env.sh
PY="$ROOT/.venv/bin/python"
SAMPLE=resources/sample
OUT=demo_output
rm -rf "$OUT"
mkdir -p "$OUT"
bash "$ROOT/scripts/enable_plugin.sh"

# Wall time and peak memory of each step, from GNU time where it is installed.
TIMES="$OUT/times.txt"
: >"$TIMES"
step() {  # step LABEL COMMAND...
  local label="$1"; shift
  echo "== $label"
  if [ -x /usr/bin/time ]; then
    /usr/bin/time -f "$label %e %M" -a -o "$TIMES" "$@"
  else
    local t0=$SECONDS; "$@"; echo "$label $((SECONDS - t0)) -" >>"$TIMES"
  fi
}

layers() {  # layers KEY PREFIX: KEY=file for every sample file of that role
  local f
  for f in "$SAMPLE"/"$2"_*.tif; do printf '%s\n' "$1=$ROOT/$f"; done
}
mapfile -t BUILD_ARGS < <(layers FINE_MS fine_ms; layers DENSE_MS dense_ms; layers HS hs)
if [ "${#BUILD_ARGS[@]}" -eq 0 ]; then
  echo "No sample rasters in $SAMPLE: regenerate them with '$PY scripts/make_sample.py'." >&2
  exit 1
fi

# Each step is a plain qgis_process call: copy them to run the job on your own data.
step "Build MDD stack" qgis_process.bin run stsfusion:buildmdd -- \
  "${BUILD_ARGS[@]}" OUTPUT="$ROOT/$OUT/sample_mdd.json"
step "Train fusion model" qgis_process.bin run stsfusion:train -- \
  MDD="$ROOT/$OUT/sample_mdd.json" OUTPUT_MODEL="$ROOT/$OUT/sample_model.pt"
step "Fuse time series" qgis_process.bin run stsfusion:fuse -- \
  MDD="$ROOT/$OUT/sample_mdd.json" MODEL="$ROOT/$OUT/sample_model.pt" \
  OUTPUT_FOLDER="$ROOT/$OUT/fused"

echo
echo "Fused GeoTIFFs (fine grid, HS bands; open them in QGIS):"
ls -1 "$ROOT/$OUT"/fused/fused_*.tif

# Accuracy on the dates that have no HS image, against the sample's withheld fine HS truth.
"$PY" scripts/make_sample.py --truth "$OUT/truth" >/dev/null
"$PY" - "$OUT" <<'EOF'
import os, sys
sys.path.insert(0, os.path.join(os.getcwd(), ".build", "plugins"))
from stsfusion.model.mdd.format import MDD
from stsfusion.model.evaluation.metrics import assess_rasters

out = sys.argv[1]
mdd = MDD.open(os.path.join(out, "sample_mdd.json"))
dates = [d for d in mdd.dates if d not in mdd.roles["hs"].dates]
ratio = mdd.scale_ratio("hs")  # ERGAS: HS pixel / fine pixel
os.makedirs(os.path.join(out, "accuracy"), exist_ok=True)
results = [assess_rasters(os.path.join(out, "fused", f"fused_{d}.tif"),
                          os.path.join(out, "truth", f"truth_hs_{d}.tif"), ratio,
                          os.path.join(out, "accuracy", f"accuracy_{d}.csv"))["overall"] for d in dates]
mean = {k: sum(r[k] for r in results) / len(results) for k in results[0]}
print(f"\nAccuracy on the {len(dates)} dates without an HS image ({', '.join(dates)}), mean against "
      f"the withheld truth: CC {mean['CC']:.3f}, SAM {mean['SAM']:.2f} deg, PSNR {mean['PSNR']:.2f} dB, "
      f"SSIM {mean['SSIM']:.3f}, ERGAS {mean['ERGAS']:.2f}, RMSE {mean['RMSE']:.4f} "
      f"(per band: {out}/accuracy/)")
EOF

echo
awk '{m=$NF; t=$(NF-1); $NF=""; $(NF-1)="";
      printf "%-22s wall %7.1f s, peak memory %s\n", $0, t, (m=="-") ? "n/a" : sprintf("%.0f MiB", m/1024);
      total += t; if (m != "-" && m > peak) peak = m}
     END {printf "%-22s wall %7.1f s, peak memory %.0f MiB\n", "Demo (3 steps)", total, peak/1024}' "$TIMES"
