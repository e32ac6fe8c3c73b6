// peerjs-server 1.0.2 (npm `peer`) as a user would run it, for the comparison section of
// tests/bench/bench.py: one process, key "peerjs", the WebSocket at /peerjs.
// The concurrent limit is raised (its default of 5000 would refuse the idle-memory run).
// usage: node peerjs-server.mjs PORT
import { PeerServer } from "peer";

const port = Number(process.argv[2]);
PeerServer({ host: "127.0.0.1", port, path: "/", key: "peerjs", concurrent_limit: 1000000 },
    () => console.log(JSON.stringify({ event: "listening", port })));
