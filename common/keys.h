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
/* P:node:N:sockets, the index of the sockets node N hosts. */
int sb_key_node_sockets(char *buf, size_t len, const char *prefix, const char *node);
/* The pub/sub channel everything for node N is published to. (It is spelled like the lease
 * key, P:node:N; channels and keys are separate namespaces in Redis. The scripts build the
 * same name: lua/README.md.) */
int sb_channel_node(char *buf, size_t len, const char *prefix, const char *node);

/* 1 when s is a valid room name: 1..64 of [A-Za-z0-9._-]. */
int sb_valid_room(const char *s);
/* The same for a counted string (no NUL needed). */
int sb_valid_room_n(const char *s, size_t len);
/* 1 when s looks like a socket id: 22..64 of [A-Za-z0-9_-]. */
int sb_valid_sid(const char *s);

#endif
