# Sourced by the HTTP benchmarks (http.sh, http_cpu.sh, http_instructions.sh):
# the one hello script they all time, and waiting for a server to answer.

# The hello script every HTTP case runs, stored in the registry as "hello"
# (bench/http.lua's BENCH_MODE=stored), so all harnesses time the same work.
HELLO_STORE_BODY='{"name": "hello", "source": "addVar(greeting, \"Hello\")\naddResult(greeting)\n"}'

# wait_until_answers URL TRIES PAUSE: poll URL until any HTTP answer comes,
# at most TRIES times PAUSE seconds apart; fails when none did.
wait_until_answers() {
    local _
    for _ in $(seq "$2"); do
        curl -s -o /dev/null "$1" && return 0
        sleep "$3"
    done
    return 1
}

# store_hello ADDR: store the hello script on the avap server at ADDR (host:port).
store_hello() {
    curl -sf -X POST -H 'Content-Type: application/json' --data "$HELLO_STORE_BODY" \
        "http://$1/api/v1/scripts" >/dev/null
}
