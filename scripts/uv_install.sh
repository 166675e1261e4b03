# Sourced by setup.sh and setup_vllm.sh. `uv_install VENV REQUIREMENT...` installs into VENV with
# uv, which resolves and installs faster than pip (both environments in 109 s against 179 s
# with pip here: docs/benchmarks.md). uv lives in .venv, installed there by pip.
# It reads no pip configuration, so it is handed pip's find-links: where pip names a local folder
# of wheels (this machine's CPU build of torch), uv takes the same files. (Not pip's extra
# indexes: uv takes each package from the first index that has it, and a partial local mirror
# would then hide PyPI's newer releases.)
UV_VERSION=0.13.10

uv_install() {
  local venv=$1 uv=${GFT_VENV:-.venv}/bin/uv options=() links
  shift
  if [ ! -x "$uv" ]; then  # a .venv set up before uv was
    "$(dirname "$uv")/python" -m pip install -q "uv==$UV_VERSION" 2> >(grep -v "^WARNING: Location" >&2)
  fi
  links=$(python3 -m pip config get global.find-links 2>/dev/null || true)
  for link in $links; do options+=(--find-links "$link"); done
  # --compile-bytecode: as pip does, the .pyc files written now; a machine that sets
  # PYTHONDONTWRITEBYTECODE would otherwise compile torch and transformers from source in every
  # process that imports them (this one does: the test suite took twice as long)
  VIRTUAL_ENV=$venv "$uv" pip install -q --compile-bytecode "${options[@]}" "$@"
}
