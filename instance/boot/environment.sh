# The agent's Python environment, sourced by bootstrap.sh from the run bundle (it brings aws_cli,
# uv_bin, BUCKET, ROOT and PYTHON_BUILD). One tarball in S3 holds a standalone CPython and the
# venv built on it from instance/requirements.txt; it unpacks to the same path on every machine,
# so the venv's links to its interpreter hold. A miss builds both with uv (over HTTPS: uv's own
# Python builds and PyPI), saves them for the next run, and goes on; a failed save only costs
# the next run the same build.

tarball_format() {  # zst where this machine has zstd (it inflates several times faster than gzip), else gz
  if command -v zstd >/dev/null; then echo zst; else echo gz; fi
}

env_key() {  # must equal instance.protocol.layout.python_env_key; its suffix names the tarball's format
  local hash
  hash=$(sha256sum instance/requirements.txt | cut -c1-16)
  echo "cached-datasets/python-env/chronos-env-$PYTHON_BUILD-$(uname -m)-$hash.tar.$(tarball_format)"
}

compressor() {  # $1 a key; tar adds -d to unpack. The key's suffix decides, never the machine alone,
  # so a zstd tarball is never fed to gzip: a machine without zstd asks for the .tar.gz key.
  case $1 in
    *.tar.zst) echo "zstd -T0 -3" ;;  # packs on every core
    *.tar.gz) if command -v pigz >/dev/null; then echo "pigz -1"; else echo "gzip -1"; fi ;;
    *) echo "bootstrap: $1 names no tarball format this script knows (.tar.zst, .tar.gz)" >&2; return 1 ;;
  esac
}

restore_environment() {  # $1 env dir, $2 key; fails when the cache has no such environment
  local dir=$1 key=$2 program
  program=$(compressor "$key") || return 1
  rm -rf "$dir.partial" && mkdir -p "$dir.partial" || return 1
  # Streamed from S3 into tar: the download and the unpack overlap, and the tarball never
  # touches the disk (on a gp3 root volume, disk throughput is what bounds a restore).
  if ! aws_cli s3 cp --only-show-errors "s3://$BUCKET/$key" - | tar -I "$program" -xf - -C "$dir.partial"; then
    rm -rf "$dir.partial"
    return 1
  fi
  # The links inside point at $dir: unpacked beside it, renamed at the end, never half there.
  rm -rf "$dir" && mv "$dir.partial" "$dir"
}

build_environment() {  # $1 env dir: $1/python (standalone CPython) and $1/venv
  local dir=$1 uv interpreter version=${PYTHON_BUILD#cpython-}
  uv=$(uv_bin) || return 1
  rm -rf "$dir" && mkdir -p "$dir" || return 1
  UV_PYTHON_INSTALL_DIR="$dir/python" "$uv" python install --no-bin "$version" || return 1
  interpreter=$(ls -d "$dir"/python/cpython-"$version"-*/bin/python3 2>/dev/null | head -n 1)
  [ -n "$interpreter" ] || { echo "bootstrap: uv installed no $PYTHON_BUILD under $dir/python" >&2; return 1; }
  "$uv" venv --quiet --python "$interpreter" "$dir/venv" || return 1
  UV_CACHE_DIR="$ROOT/uv-cache" "$uv" pip install --python "$dir/venv/bin/python" -r instance/requirements.txt || return 1
}

upload_tarball() {  # $1 env dir, $2 file, $3 key; says which tool stored it. The environment's own
  # Python first: the agent's transfer path sends the parts in parallel (gigabytes, on GPU time);
  # the AWS CLI where that Python cannot (a broken build fails the agent later, not this save).
  local rc
  "$1/venv/bin/python" -m instance.boot.upload "$2" "$BUCKET" "$3" >&2 && { echo "the environment's python"; return 0; }
  rc=$?  # a signal leaves no message of its own: the exit status says which (134: SIGABRT)
  echo "bootstrap: the environment's python could not save it (exit $rc); saving it by aws s3 cp" >&2
  aws_cli s3 cp --only-show-errors "$2" "s3://$BUCKET/$3" >&2 && echo "aws s3 cp"
}

save_environment() {  # $1 env dir, $2 key; a refusal is logged, never fatal
  local dir=$1 key=$2 tarball="$1.upload.${2##*.}" started=$SECONDS program tool
  if program=$(compressor "$key") && tar -I "$program" -cf "$tarball" -C "$dir" . \
     && tool=$(upload_tarball "$dir" "$tarball" "$key"); then
    echo "bootstrap: saved the environment as s3://$BUCKET/$key ($(du -m "$tarball" | cut -f1) MB, $((SECONDS - started)) s, by $tool)"
  else
    echo "bootstrap: could not save the environment to s3://$BUCKET/$key; the next run builds it again"
  fi
  rm -f "$tarball"
}

prepare_environment() {  # $1 env dir
  local dir=$1 key started=$SECONDS
  key=$(env_key)
  if [ "$(cat "$dir/.chronos-env" 2>/dev/null)" = "$key" ]; then
    echo "bootstrap: environment $key already here"
    return 0
  fi
  if restore_environment "$dir" "$key"; then
    echo "bootstrap: environment restored from s3://$BUCKET/$key in $((SECONDS - started)) s"
  else
    echo "bootstrap: no cached environment at s3://$BUCKET/$key; building it with uv"
    build_environment "$dir" || return 1
    echo "bootstrap: environment built in $((SECONDS - started)) s"
    echo "$key" > "$dir/.chronos-env"
    save_environment "$dir" "$key"
  fi
  echo "$key" > "$dir/.chronos-env"
}
