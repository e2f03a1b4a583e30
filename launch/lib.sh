# shellcheck shell=bash
# Shared by the launchers (sourced): printing commands so that a shell reads them back word for word.

quote() {  # one word: bare when safe, else in single quotes
  if [[ $1 =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then printf '%s' "$1"; else
    local q="'\\''"; printf "'%s'" "${1//\'/$q}"; fi
}

show() {  # the command on one line, each word quoted
  local word line=""
  for word in "$@"; do line+="$(quote "$word") "; done
  echo "${line% }"
}

run() {  # show, then run unless the caller set dry_run=1
  show "$@"
  [ "${dry_run:-0}" = 1 ] || "$@"
}
