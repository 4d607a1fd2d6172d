#!/bin/bash
# The GPU checks of docs/scale.md in one go, for an offline GPU machine that has torch but not hydra
# (see ../shared/GPU.md). Two steps, from the repository root:
#   bash benchmarks/gpu_session.sh prepare      # here, with the package index: wheels + gzipped data into .gpu/
#   bash benchmarks/gpu_session.sh run          # there (carry .gpu/): CUDA tests, a captured run resumed, the
#                                               # series step captured vs eager, then benchmarks/gpu_check.py
# Logs and the check's table go to $OUT (the device tool's folder that comes back), else ./gpu_out.
set -u
cd "$(dirname "$0")/.."
DATA=${SEQVAE_DATA_DIR:-../shared/data}
if [ "${1:-}" = prepare ]; then
    grep -qx /.gpu/ .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo /.gpu/ >> .git/info/exclude; }
    mkdir -p .gpu/whl .gpu/data/MNIST/raw .gpu/data/ptb .gpu/data/ECG5000
    pip download -q --no-deps -d .gpu/whl hydra-core==1.3.8 omegaconf==2.3.0 antlr4-python3-runtime==4.9.3
    (cd .gpu/whl && pip wheel -q --no-deps antlr4-python3-runtime-4.9.3.tar.gz -w . && rm -f antlr4-*.tar.gz)
    for f in "$DATA"/MNIST/raw/*-ubyte "$DATA"/ptb/*.txt "$DATA"/ECG5000/*.tsv; do
        sub=$(basename "$(dirname "$f")"); [ "$sub" = raw ] && sub=MNIST/raw
        gzip -c "$f" > ".gpu/data/$sub/$(basename "$f").gz"
    done
    du -sh .gpu; exit 0
fi
[ "${1:-}" = run ] || { echo "usage: $0 prepare|run"; exit 2; }
OUT=${OUT:-$PWD/gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/whl/*.whl || exit 1
mkdir -p /tmp/bin; printf '#!/bin/sh\nexec python3 -m seqvae_cli "$@"\n' > /tmp/bin/seqvae; chmod +x /tmp/bin/seqvae
export PATH=/tmp/bin:$PATH PYTHONPATH=/tmp/site:$PWD SEQVAE_DATA_DIR=$PWD/.gpu/data
gunzip -kf .gpu/data/MNIST/raw/*.gz .gpu/data/ptb/*.gz .gpu/data/ECG5000/*.gz
W=$(mktemp -d)
{
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
echo "== CUDA tests"
timeout 200 python3 -m pytest -q -x -p no:cacheprovider tests/test_distributed.py -k cuda 2>&1 | tail -15
echo "== a captured run, then resumed (the capturable optimiser from a checkpoint)"
common="trainer.progress_bar=false device=cuda run_dir=$W/graph"
timeout 120 seqvae train experiment=mnist_pe trainer.max_epochs=2 $common 2>&1 | grep -E "epoch|captured|rror"
timeout 120 seqvae train experiment=mnist_pe trainer.max_epochs=3 trainer.resume=true $common 2>&1 \
    | grep -E "epoch|resum|captured|rror"
cp "$W/graph/checkpoints/last.pt" "$OUT/graph_last.pt"
echo "== series: the LSTM step captured (true) vs eager (false)"
for g in true false; do
    timeout 120 seqvae train experiment=ecg5000 device=cuda trainer.max_epochs=3 trainer.cuda_graphs=$g \
        trainer.test=false trainer.progress_bar=false run_dir="$W/ecg_$g" 2>&1 | grep -E "epoch [0-9]+: train|captured|rror"
done
echo "== gpu_check"
timeout 300 python3 benchmarks/gpu_check.py --budget 250 --out "$OUT/gpu_check.json" 2>&1
} 2>&1 | tee "$OUT/log.txt"
