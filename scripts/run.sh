#!/usr/bin/env bash
# Set up (or reuse) .venv in the repository root, then run the main job or the tests.
#   bash scripts/run.sh main   train shapes32 on the built-in shapes domain, sample, score
#   bash scripts/run.sh test   install the test extra and run the test suite
set -euo pipefail
cd "$(dirname "$0")/.."
job=${1:-main}
case "$job" in
  main) extra="" ;;
  test) extra="[test]" ;;
  *) echo "usage: bash scripts/run.sh main|test (got '$job')" >&2; exit 2 ;;
esac

[ -x .venv/bin/python ] || python3 -m venv .venv
# Install only when pyproject.toml changed since the last install of this job's extras.
stamp=".venv/.installed-$job-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-cache-dir -e ".$extra"
  touch "$stamp"
fi

# OpenMP's busy-wait costs 5-50x on a machine whose cores are shared (measured); passive is
# harmless on an idle one.
export OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
if [ "$job" = test ]; then
  exec .venv/bin/python -m pytest tests "${@:2}"
fi
exec .venv/bin/python scripts/main_job.py "${@:2}"
