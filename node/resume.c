/* Session resume tokens (resume.h). */
#include "resume.h"
#include "proto.h"

#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>

int sb_resume_hash(const char *token, char *hash)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (!EVP_Digest(token, strlen(token), md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return -1;
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(hash + 2 * i, 3, "%02x", md[i]);
    return 0;
}

int sb_resume_token(char *token, char *hash)
{
    /* Two socket ids: 2 x 128 random bits, base64url. */
    if (sb_proto_new_sid(token, 23) != 0 || sb_proto_new_sid(token + 22, 23) != 0)
        return -1;
    return hash ? sb_resume_hash(token, hash) : 0;
}
