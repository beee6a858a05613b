"""A minimal Tornado service: the HTTP peer of bench/http.sh (issue 8).

Tornado is the framework of the reference AVAP server. This service answers
POST /api/v1/execute with the same constant JSON envelope as
examples/bare_axum.rs (and GET /api/v1/health), without reading the body or
interpreting anything: a lower bound for the reference server's cost per
request. One process per CPU (tornado.process.fork_processes(0)) sharing the
listening socket, so it can use both cores like the tokio servers.

Usage: python3 bench/peers/tornado_hello.py [--listen 127.0.0.1:18082] [--processes N]
"""

import json
import sys

import tornado.httpserver
import tornado.ioloop
import tornado.netutil
import tornado.process
import tornado.web

ENVELOPE = json.dumps({"status": True, "elapsed": 0.0, "result": {"greeting": "Hello"}}, separators=(",", ":"))
HEALTH = json.dumps({"status": "ok"}, separators=(",", ":"))


class Execute(tornado.web.RequestHandler):
    def post(self):
        self.set_header("Content-Type", "application/json")
        self.write(ENVELOPE)


class Health(tornado.web.RequestHandler):
    def get(self):
        self.set_header("Content-Type", "application/json")
        self.write(HEALTH)


def main():
    listen, processes = "127.0.0.1:18082", 0
    args = sys.argv[1:]
    while args:
        flag = args.pop(0)
        if flag == "--listen" and args:
            listen = args.pop(0)
        elif flag == "--processes" and args:
            processes = int(args.pop(0))
        else:
            sys.exit("usage: tornado_hello.py [--listen ADDR:PORT] [--processes N]")
    host, port = listen.rsplit(":", 1)
    sockets = tornado.netutil.bind_sockets(int(port), address=host)
    tornado.process.fork_processes(processes)
    app = tornado.web.Application([("/api/v1/execute", Execute), ("/api/v1/health", Health)])
    server = tornado.httpserver.HTTPServer(app)
    server.add_sockets(sockets)
    print(f"tornado_hello listening on http://{listen}", flush=True)
    tornado.ioloop.IOLoop.current().start()


if __name__ == "__main__":
    main()
