#!/usr/bin/env bash
# The wheels a device machine needs to run scripts/gpu-check.sh: specq's own dependencies
# that its image lacks (it holds torch, numpy, numba, pyarrow, matplotlib, tqdm and the like,
# but no Celery, astropy or SQLAlchemy), for its Python 3.12 on x86-64, at the versions of this
# checkout's .venv. They go to .whl/ (ignored by git); gpu-check.sh installs them there.
#   scripts/gpu-wheels.sh      then carry .whl with the run that calls scripts/gpu-check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
NAMES="amqp astropy astropy-iers-data billiard celery click-didyoumean click-plugins click-repl kombu
prompt_toolkit pyerfa redis SQLAlchemy tzlocal vine watchdog wcwidth"
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
frozen="$(.venv/bin/python -m pip freeze)"
for name in $NAMES; do
    pinned="$(grep -i "^${name}==" <<<"$frozen" || true)"
    [ -n "$pinned" ] || { echo "gpu-wheels: $name is not in .venv (run make install first)" >&2; exit 2; }
    python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$pinned"
done
echo "gpu-wheels: $(find .whl -name "*.whl" | wc -l) wheels in .whl ($(du -sh .whl | cut -f1))"
