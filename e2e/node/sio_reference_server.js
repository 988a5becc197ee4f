#!/usr/bin/env node
// Reference Socket.IO conformance server on Node's own `socket.io` (pinned in e2e/package.json).
//
// It has the same behaviour as Volley's conformance example
// (crates/volley-socketio/examples/conformance.rs) and is a calibration tool: every scenario of
// e2e/node/sio_client.js and e2e/python/sio_client.py must pass against it, which proves that the
// scenarios test real Socket.IO behaviour and not an accident of the Rust server.
//
//   node e2e/node/sio_reference_server.js [--port N] [--ping-interval-ms N] [--ping-timeout-ms N]
//       [--connect-timeout-ms N] [--parser msgpack]
//
// Listens on 127.0.0.1 (default port 3000; 0 picks a free port) and prints
// `listening on 127.0.0.1:PORT` once it accepts connections. Stops on SIGINT/SIGTERM.
"use strict";

const http = require("http");
const { Server } = require("socket.io");

function parseArgs(argv) {
  const opts = { port: 3000, pingInterval: 300, pingTimeout: 200, connectTimeout: 1000 };
  for (let i = 0; i < argv.length; i++) {
    const value = () => {
      const v = Number(argv[++i]);
      if (!Number.isInteger(v) || v < 0) {
        console.error(`invalid value for ${argv[i - 1]}: ${argv[i]}`);
        process.exit(2);
      }
      return v;
    };
    switch (argv[i]) {
      case "--port":
        opts.port = value();
        break;
      case "--ping-interval-ms":
        opts.pingInterval = value();
        break;
      case "--ping-timeout-ms":
        opts.pingTimeout = value();
        break;
      case "--connect-timeout-ms":
        opts.connectTimeout = value();
        break;
      case "--parser":
        if (argv[++i] !== "msgpack") {
          console.error(`unknown parser ${argv[i]}`);
          process.exit(2);
        }
        opts.parser = require("socket.io-msgpack-parser");
        break;
      default:
        console.error(`unknown argument ${argv[i]}`);
        console.error(
          "usage: sio_reference_server.js [--port N] [--ping-interval-ms N] [--ping-timeout-ms N] [--connect-timeout-ms N] [--parser msgpack]",
        );
        process.exit(2);
    }
  }
  return opts;
}

// Splits a handler's arguments into (args, ack) where ack is the trailing callback, if any.
function splitAck(args) {
  if (args.length > 0 && typeof args[args.length - 1] === "function") {
    return [args.slice(0, -1), args[args.length - 1]];
  }
  return [args, null];
}

function setup(nsp) {
  // Connect middleware: auth {"reject": true} is refused with a message and data.
  nsp.use((socket, next) => {
    const auth = socket.handshake.auth;
    if (auth && typeof auth === "object" && auth.reject === true) {
      const err = new Error("not authorized");
      err.data = { code: 401 };
      next(err);
    } else {
      next();
    }
  });

  nsp.on("connection", (socket) => {
    socket.emit("auth", socket.handshake.auth || {});

    socket.on("message", (...args) => {
      const [data] = splitAck(args);
      socket.emit("message-back", ...data);
    });

    socket.on("message-with-ack", (...args) => {
      const [data, ack] = splitAck(args);
      if (ack) ack(...data);
    });

    socket.on("join", (...args) => {
      const [[room], ack] = splitAck(args);
      socket.join(String(room));
      if (ack) ack();
    });

    socket.on("leave", (...args) => {
      const [[room], ack] = splitAck(args);
      socket.leave(String(room));
      if (ack) ack();
    });

    socket.on("to-room", (...args) => {
      const [[room, ...rest], ack] = splitAck(args);
      nsp.to(String(room)).emit("room-message", ...rest);
      if (ack) ack();
    });

    socket.on("server-ack", (...args) => {
      const [[payload]] = splitAck(args);
      socket.timeout(1000).emit("ask", payload, (err, ...reply) => {
        if (err) socket.emit("ask-timeout");
        else socket.emit("ask-result", ...reply);
      });
    });

    // Abrupt Engine.IO close (WebSocket: the connection is closed; polling: a close packet):
    // the client sees a transport close and reconnects by itself.
    socket.on("close-transport", () => socket.conn.close());

    // Namespace-level disconnect: the client sees "io server disconnect" and does not reconnect.
    socket.on("disconnect-me", () => socket.disconnect());
  });
}

const opts = parseArgs(process.argv.slice(2));
const httpServer = http.createServer();
const io = new Server(httpServer, {
  path: "/socket.io/",
  pingInterval: opts.pingInterval,
  pingTimeout: opts.pingTimeout,
  connectTimeout: opts.connectTimeout,
  maxHttpBufferSize: 1e6,
  ...(opts.parser ? { parser: opts.parser } : {}),
});
setup(io.of("/"));
setup(io.of("/custom"));

httpServer.listen(opts.port, "127.0.0.1", () => {
  console.log(`listening on 127.0.0.1:${httpServer.address().port}`);
});

const stop = () => {
  io.close();
  httpServer.close();
  setTimeout(() => process.exit(0), 200).unref();
};
process.on("SIGINT", stop);
process.on("SIGTERM", stop);
