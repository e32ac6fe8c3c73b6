// Socket.IO 4.8 with @socket.io/redis-adapter, for the comparison section of
// tests/bench/bench.py: each process relays `signal` {to, data} to the socket `to`, wherever it
// is connected, as {from, data}; run two of them on one redis-server.
// usage: node sio-server.mjs PORT REDIS_URL
import { createServer } from "node:http";
import { Server } from "socket.io";
import { createAdapter } from "@socket.io/redis-adapter";
import { createClient } from "redis";

const port = Number(process.argv[2]);
const pub = createClient({ url: process.argv[3] });
const sub = pub.duplicate();
await Promise.all([pub.connect(), sub.connect()]);
const http = createServer();
const io = new Server(http, { adapter: createAdapter(pub, sub), transports: ["websocket"] });
io.on("connection", (socket) => {
    socket.on("signal", (m) => {
        if (m && typeof m.to === "string")
            io.to(m.to).emit("signal", { from: socket.id, data: m.data });
    });
});
http.listen(port, "127.0.0.1", () => console.log(JSON.stringify({ event: "listening", port })));
