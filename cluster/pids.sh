# Shared by cluster/up, cluster/status and cluster/down (sourced, not run): pid bookkeeping and --help.
# Each line of a run directory's `pids` file is "PID STARTTIME", the start time being field 22 of
# /proc/PID/stat (clock ticks since boot). A pid counts as ours only while that process still has
# that start time, so a number the kernel has since given to another process is never signalled.

# Prints the state and start time of process $1; fails when there is no such process.
state_and_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }            # drop "PID (comm) ": comm may hold spaces and parentheses
  # shellcheck disable=SC2086
  set -- $stat                 # now field 3 (state) is $1, so field 22 (starttime) is ${20}
  echo "$1 ${20}"
}

# Prints the start time of process $1; fails when there is no such process, or when it has
# exited and only its zombie is left (nothing to stop; its parent may not be there to reap it).
started_at() {
  local s
  s=$(state_and_start "$1") || return 1
  case "$s" in Z\ *|X\ *) return 1 ;; esac
  echo "${s#* }"
}

# Appends process $1 to pid file $2.
record_pid() { echo "$1 $(started_at "$1")" >> "$2"; }

# True while process $1 runs and started at $2.
is_ours() { [ -n "$2" ] && [ "$(started_at "$1" 2>/dev/null)" = "$2" ]; }

# True when any process recorded in pid file $1 is still ours.
any_ours() {
  local pid start
  while read -r pid start; do
    [ -n "$pid" ] && is_ours "$pid" "$start" && return 0
  done < "$1"
  return 1
}

# With -h or --help as the first argument: prints the calling script's header comment and exits.
help_if_asked() {
  case "${1:-}" in
    -h|--help) sed -n '2,/^[^#]/p' "$0" | grep '^#' | sed 's/^# \{0,1\}//'; exit 0 ;;
  esac
}
