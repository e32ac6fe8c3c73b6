/* Redis key and channel names, in one place (lua/README.md draws the schema). Pure: no I/O.
 * Every function writes a NUL-terminated name into buf and returns its length, or -1 when it
 * does not fit (buf then holds a truncated name that must not be used). Also the validators of
 * the names that go into keys (room names, socket ids), shared by node and admin. */
#ifndef SB_KEYS_H
#define SB_KEYS_H

#include <stddef.h>

#define SB_ROOM_MAX 64
#define SB_SID_MAX 64
/* Room keys are "P:{R}:" + suffix: 64 (prefix) + 64 (room) + the longest suffix
 * ("presence:" + a socket id) fit well within this. */
#define SB_KEY_MAX 256

/* P:{R}:suffix, a key of room R (suffix "members", "stats", "links:S", "presence:S", ...). */
int sb_key_room(char *buf, size_t len, const char *prefix, const char *room, const char *suffix);
/* The same with the room given as a counted string (not NUL-terminated). */
int sb_key_room_n(char *buf, size_t len, const char *prefix, const char *room, size_t room_len,
                  const char *suffix);
/* P:suffix, a global key ("instance", "stats", "rooms", "nodes", "events", "admin:lock", ...). */
int sb_key_global(char *buf, size_t len, const char *prefix, const char *suffix);
/* P:node:N, node N's lease key. */
int sb_key_node_lease(char *buf, size_t len, const char *prefix, const char *node);
/* Buckets (lua/README.md): the figures and indexes that span rooms are kept per bucket, in
 * the room's own slot, so every room script touches one slot. A bucket is named by its tag T
 * ("P:{T}:stats", "P:{T}:rooms", ...): "#" on a single Redis (one bucket), and on a Redis
 * Cluster "#<n>", n the smallest number whose tag "#<n>" hashes to the room's slot (one bucket
 * per slot). Room names never contain '#', so a bucket never collides with a room. */
#define SB_TAG_MAX 8 /* "#" + up to 6 digits + NUL */
#define SB_TAG_SINGLE "#"
/* The tag of the bucket of slot (cluster), built once on first use. */
const char *sb_tag_of_slot(unsigned slot);
/* The tag of room[0..len)'s bucket: sb_tag_of_slot of its slot when cluster, else "#". */
const char *sb_tag_of_room(int cluster, const char *room, size_t len);
/* P:{T}:node:N:sockets, bucket T's index of the sockets node N hosts ("R S" entries). */
int sb_key_node_sockets(char *buf, size_t len, const char *prefix, const char *tag,
                        const char *node);
/* P:{T}:node:N, the sharded pub/sub channel that carries to node N the events of bucket T's
 * rooms and the signals for N's sockets in them (in the bucket's slot, so the scripts may
 * publish to it). The scripts build the same name: lua/README.md. */
int sb_channel_node(char *buf, size_t len, const char *prefix, const char *tag, const char *node);
/* P:{T}:node:N:backlog, the events of that channel nobody received (lua/README.md). */
int sb_key_node_backlog(char *buf, size_t len, const char *prefix, const char *tag,
                        const char *node);

/* 1 when s is a valid room name: 1..64 of [A-Za-z0-9._-]. */
int sb_valid_room(const char *s);
/* The same for a counted string (no NUL needed). */
int sb_valid_room_n(const char *s, size_t len);

/* A PeerJS key K (1..32 of [A-Za-z0-9._-]) lives in the room "~pj.K" (docs/peerjs.md): "~" is
 * not a room character, so no native room can take that name. */
#define SB_PJ_KEY_MAX 32
#define SB_PJ_ROOM_PREFIX "~pj."
/* 1 when s (counted) is a room name the keys may hold: a valid native room, or a PeerJS key's
 * room. What the admin accepts from Redis (room indexes, socket indexes). */
int sb_valid_stored_room_n(const char *s, size_t len);
/* 1 when s looks like a socket id: 22..64 of [A-Za-z0-9_-]. */
int sb_valid_sid(const char *s);

#endif
