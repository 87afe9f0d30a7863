#!/usr/bin/env bash
# Run HERE (the development box), before a GPU run: downloads into .whl/ (git-ignored) the wheels that the
# device machine's Python 3.12 lacks for `bench/gpu.sh` (its image has torch, but not diffusers, segmoe or
# pydantic), the versions this project pins. Then call the device tool with carry [".whl"] and the command
# `bash bench/gpu.sh` (bench/README.md, "On a GPU").
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl && mkdir .whl
wheels=(  # the versions of the project's own environment (scripts/setup.sh) on 2026-12-03
  diffusers==0.42.1 segmoe==0.0.4 transformers==5.24.0 importlib_metadata==10.2.0 lazy-importer==0.1.0
  zipp==4.1.2 pydantic==2.14.4 pydantic_core==2.50.5 pydantic_settings==2.16.3 python_dotenv==1.2.4
  annotated_types==0.8.0 typing_inspection==0.4.5 typing_extensions==4.16.0
)
for wheel in "${wheels[@]}"; do
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "$wheel"
done
du -sh .whl && ls .whl
