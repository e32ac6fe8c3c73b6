/* PeerJS compatibility (docs/peerjs.md): what is pure about the PeerJS wire protocol. Names (ids,
 * keys, the key's internal room), decoding a client's message, building the frames we send, and
 * the connection ids a socket's OFFERs and ANSWERs carried (how a node sees a link form). No lws,
 * no Redis: the upgrade and HTTP routes are in server.c, claim and relay in route.c. */
#ifndef SB_PEERJS_H
#define SB_PEERJS_H

#include "keys.h" /* SB_PJ_KEY_MAX, SB_PJ_ROOM_PREFIX: the admin reads these rooms too */

#include <stddef.h>
#include <stdint.h>

#define SB_PJ_ID_MAX 64
#define SB_PJ_CONNID_MAX 64
#define SB_PJ_TOKEN_MAX 256 /* longest PeerJS token taken (peer's are about 11 characters) */
#define SB_PJ_CONNS 32      /* connection ids remembered per socket (the oldest go first) */
#define SB_PJ_PENDING 32    /* messages kept per socket before its claim is done */

/* 1 when s is a PeerJS id we serve: 1..64 of ^[A-Za-z0-9]+(?:[_-][A-Za-z0-9]+)*$ (peer's regex
 * without the space). */
int sb_pj_valid_id(const char *s);
/* 1 when s is a PeerJS key: 1..32 of [A-Za-z0-9._-]. */
int sb_pj_valid_key(const char *s);
/* 1 when room is a PeerJS key's room: "~pj." and a valid key. */
int sb_pj_is_room(const char *room);
/* "~pj.KEY" into out; its length, or -1 when key is not valid or out too small. */
int sb_pj_room(char *out, size_t cap, const char *key);

typedef enum {
    SB_PJ_OTHER, /* a type we ignore (as peer does) */
    SB_PJ_HEARTBEAT,
    SB_PJ_OFFER,
    SB_PJ_ANSWER,
    SB_PJ_CANDIDATE,
    SB_PJ_LEAVE,
    SB_PJ_EXPIRE,
} sb_pj_type_t;

/* A client's message, decoded. */
typedef struct {
    sb_pj_type_t type;
    const char *tname;          /* the type's name (static) for relayed types */
    char dst[SB_PJ_ID_MAX + 1]; /* "" when absent */
    int bad_dst;                /* dst given but not a valid id (or not a string) */
    char *payload;              /* the payload's JSON text (malloc'd), or NULL when absent */
    size_t plen;
    char conn[SB_PJ_CONNID_MAX + 1]; /* payload.connectionId when a short string, else "" */
} sb_pj_msg_t;

/* Decodes a text frame. 0 and m filled (release with sb_pj_msg_free), or -1 when it is not a
 * JSON object with a string "type" (nothing to free). The payload is relayed as the client's
 * own bytes (located in the text) unless its key was escaped, then re-encoded. */
int sb_pj_decode(const char *buf, size_t len, sb_pj_msg_t *m);
void sb_pj_msg_free(sb_pj_msg_t *m);

/* {"type":T,"src":SRC,"dst":DST[,"payload":P]}: malloc'd, *len set; NULL when out of memory.
 * src and dst are valid ids (no escapes needed); payload is JSON text (plen bytes) or NULL. */
char *sb_pj_frame(const char *type, const char *src, const char *dst, const char *payload,
                  size_t plen, size_t *len);

/* A frame we relay, as delivered: its type and payload.connectionId ("" when none). */
void sb_pj_frame_info(const char *frame, size_t len, sb_pj_type_t *type, char *conn);

/* Connection ids a socket saw: OFFERs it sent (SB_PJ_SENT_OFFER) and OFFERs it received
 * (SB_PJ_GOT_OFFER), with the peer. A ring of SB_PJ_CONNS; peer and connection id are kept as
 * 64-bit FNV-1a hashes (24 bytes an entry instead of 136: memory per socket; a collision
 * could at worst count a link that is not one). */
enum { SB_PJ_SENT_OFFER = 1, SB_PJ_GOT_OFFER = 2 };
typedef struct {
    uint64_t peer, conn;
    int dir;
} sb_pj_conn_t;

/* A message that came before OPEN. */
typedef struct sb_pj_pending {
    struct sb_pj_pending *next;
    size_t len;
    char text[]; /* len bytes and a NUL */
} sb_pj_pending_t;

/* A PeerJS socket's state (about 820 bytes). */
typedef struct sb_pj {
    int64_t last_msg_ms; /* the last message (alive timeout) */
    int open;            /* OPEN was sent */
    int inflight;        /* messages in flight to pj_send (the next ones follow them there) */
    int nconns, next;
    sb_pj_conn_t conns[SB_PJ_CONNS];
    sb_pj_pending_t *pending, *pending_tail; /* before OPEN, in order */
    int npending;
} sb_pj_t;

/* Keeps a message that came before OPEN: 0, or -1 (SB_PJ_PENDING kept already, or out of
 * memory: dropped). */
int sb_pj_pending_add(sb_pj_t *p, const char *text, size_t len);
/* The kept messages, oldest first (the caller frees each); p keeps none any more. */
sb_pj_pending_t *sb_pj_pending_take(sb_pj_t *p);

void sb_pj_conn_add(sb_pj_t *p, int dir, const char *peer, const char *conn);
/* 1 when (dir, peer, conn) was added and not forgotten since. */
int sb_pj_conn_has(const sb_pj_t *p, int dir, const char *peer, const char *conn);
/* Forgets every connection id with peer. */
void sb_pj_conn_forget(sb_pj_t *p, const char *peer);
void sb_pj_free(sb_pj_t *p);

/* A random UUID v4 (36 characters and the NUL) into out: GET {path}/{key}/id. 0, or -1 when
 * the OS random source fails. */
int sb_pj_uuid(char *out);

/* Which PeerJS route path (without query) is under the PeerJS path base. */
enum {
    SB_PJ_HTTP_NONE,  /* not a PeerJS route */
    SB_PJ_HTTP_ROOT,  /* {base} or {base}/: the description */
    SB_PJ_HTTP_WS,    /* {base}/peerjs: the WebSocket */
    SB_PJ_HTTP_ID,    /* {base}/{key}/id */
    SB_PJ_HTTP_PEERS, /* {base}/{key}/peers */
};
int sb_pj_http_route(const char *base, const char *path);

/* What a frame that is not a PeerJS message gets (the socket stays open; peer ignores it). */
#define SB_PJ_INVALID_MESSAGE "{\"type\":\"ERROR\",\"payload\":{\"msg\":\"Invalid message\"}}"

/* GET {path}: peer's description. */
#define SB_PJ_DESCRIPTION                                                                          \
    "{\"name\":\"PeerJS Server\",\"description\":\"A server side element to broker connections "   \
    "between PeerJS clients.\",\"website\":\"https://peerjs.com/\"}"

#endif
