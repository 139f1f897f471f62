/* io_tls.c: the TLS layer of a connection, with OpenSSL (see io.h, io_internal.h).
 * No Python in this file.
 *
 * A bio_tls is the client side's SSL_CTX: made once per RedisCache, on the caller's
 * thread, from the files its options name (read at once, so a missing file or a
 * wrong key password is the constructor's error), then shared, read-only, by every
 * connection of its client. The I/O thread makes one SSL per connection on the
 * connected socket: the TLS handshake runs as a state of the connection (ST_TLS,
 * within connect_timeout), then reads and writes go through SSL_read / SSL_write
 * instead of recv / send. Everything is non-blocking: a call that cannot go on says
 * whether it waits for the socket to be readable or writable (c->tls_want_out). */
#include "io_internal.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <math.h>
#include <poll.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct bio_tls {
    atomic_int refs;
    SSL_CTX *ctx;
    int check_hostname;
    /* Without ssl_ca_certs / ssl_ca_path: where the CA certificates came from, as a
     * verification failure names them (" (CA certificates: ...)"), else "". */
    char ca_hint[160];
};

/* ------------------------------------------------------------------ the context */

typedef struct {
    const char *data;
    size_t len;
} key_password;

static int
password_cb(char *buf, int size, int rwflag, void *userdata)
{
    (void)rwflag;
    const key_password *pw = userdata;
    if (pw == NULL || pw->data == NULL || pw->len > (size_t)size) {
        return 0;  /* no password (or one too long for OpenSSL): the key fails to load */
    }
    memcpy(buf, pw->data, pw->len);
    return (int)pw->len;
}

/* The reason of OpenSSL's first error (its queue emptied), or `fallback`. */
static const char *
ssl_reason(const char *fallback)
{
    unsigned long e = ERR_peek_error();
    const char *why = e ? ERR_reason_error_string(e) : NULL;
    ERR_clear_error();
    return why ? why : fallback;
}

/* Can `path` (option `what`) be read as a file (dir = 0) or a directory (dir = 1)? */
static int
readable(const char *what, const char *path, int dir, char *err, size_t errlen)
{
    struct stat st;
    if (stat(path, &st) < 0 || access(path, R_OK | (dir ? X_OK : 0)) < 0) {
        snprintf(err, errlen, "%s: cannot read '%s': %s", what, path, strerror(errno));
        return -1;
    }
    if (dir ? !S_ISDIR(st.st_mode) : S_ISDIR(st.st_mode)) {
        snprintf(err, errlen, "%s: '%s' is %s", what, path,
                 dir ? "not a directory" : "a directory");
        return -1;
    }
    return 0;
}

/* The system's CA bundles, most common first: the file of OpenSSL's default
 * locations is under the OPENSSLDIR compiled into libcrypto (/usr/lib/ssl for the
 * Debian build a wheel bundles), which other systems do not have. */
static const char *const ca_bundles[] = {
    "/etc/ssl/certs/ca-certificates.crt",               /* Debian, Ubuntu, Alpine, Arch */
    "/etc/pki/tls/certs/ca-bundle.crt",                 /* RHEL, Fedora, CentOS */
    "/etc/ssl/ca-bundle.pem",                           /* openSUSE, SLES */
    "/etc/ssl/cert.pem",                                /* Alpine, the BSDs */
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", /* RHEL, Fedora */
};

/* Does one of the ':'-separated directories of `dirs` hold a hashed certificate name
 * (8 hex digits, '.', digits: what openssl rehash makes, what OpenSSL looks up)? */
static int
has_hashed_certs(const char *dirs)
{
    char dir[4096];
    while (*dirs) {
        size_t n = strcspn(dirs, ":");
        if (n > 0 && n < sizeof dir) {
            memcpy(dir, dirs, n);
            dir[n] = '\0';
            DIR *d = opendir(dir);
            struct dirent *e;
            while (d != NULL && (e = readdir(d)) != NULL) {
                const char *s = e->d_name;
                if (strspn(s, "0123456789abcdef") == 8 && s[8] == '.' &&
                    s[9] >= '0' && s[9] <= '9') {
                    closedir(d);
                    return 1;
                }
            }
            if (d != NULL) {
                closedir(d);
            }
        }
        dirs += n + (dirs[n] == ':');
    }
    return 0;
}

/* The CA certificates without ssl_ca_certs / ssl_ca_path: OpenSSL's default locations,
 * which are SSL_CERT_FILE and SSL_CERT_DIR when the environment sets them (used as they
 * are, nothing else), else the file and directory under libcrypto's OPENSSLDIR; when
 * those hold no certificate, the first of ca_bundles that loads. Done once, here, on
 * the caller's thread: no connection probes files. `hint` says where they came from. */
static int
load_default_cas(SSL_CTX *ctx, char *hint, size_t hintlen, char *err, size_t errlen)
{
    if (!SSL_CTX_set_default_verify_paths(ctx)) {  /* (out of memory only) */
        snprintf(err, errlen, "the system's CA certificates cannot be loaded: %s",
                 ssl_reason("unknown"));
        return -1;
    }
    ERR_clear_error();  /* (a default location that does not exist is not an error) */
    const char *file = X509_get_default_cert_file();
    const char *dir = X509_get_default_cert_dir();
    const char *env_file = getenv(X509_get_default_cert_file_env());
    const char *env_dir = getenv(X509_get_default_cert_dir_env());
    if (env_file != NULL || env_dir != NULL) {  /* (as OpenSSL reads them: set, not empty) */
        snprintf(hint, hintlen, " (CA certificates: %s%s, %s%s; a private CA needs "
                 "ssl_ca_certs)", env_file ? "SSL_CERT_FILE=" : "", env_file ? env_file : file,
                 env_dir ? "SSL_CERT_DIR=" : "", env_dir ? env_dir : dir);
        return 0;
    }
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    const char *found = NULL;
    if (sk_X509_OBJECT_num(X509_STORE_get0_objects(store)) > 0) {
        found = file;
    }
    else if (has_hashed_certs(dir)) {
        found = dir;
    }
    for (size_t i = 0; found == NULL && i < sizeof ca_bundles / sizeof *ca_bundles; i++) {
        if (access(ca_bundles[i], R_OK) == 0 &&
            SSL_CTX_load_verify_locations(ctx, ca_bundles[i], NULL) &&
            sk_X509_OBJECT_num(X509_STORE_get0_objects(store)) > 0) {
            found = ca_bundles[i];
        }
        ERR_clear_error();
    }
    if (found != NULL) {
        snprintf(hint, hintlen, " (CA certificates: %s; a private CA needs ssl_ca_certs or "
                 "SSL_CERT_FILE)", found);
    }
    else {
        snprintf(hint, hintlen, " (no system CA certificates found: set ssl_ca_certs or "
                 "SSL_CERT_FILE)");
    }
    return 0;
}

bio_tls *
bio_tls_new(const bio_tls_options *o, char *err, size_t errlen)
{
    ERR_clear_error();
    bio_tls *t = calloc(1, sizeof *t);
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (t == NULL || ctx == NULL) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    int min = o->min_version ? o->min_version : TLS1_2_VERSION;
    if (!SSL_CTX_set_min_proto_version(ctx, min)) {
        snprintf(err, errlen, "ssl_min_version: not supported here (%s)",
                 ssl_reason("unknown version"));
        goto fail;
    }
    /* Whole batches as one write may be sent in parts (a later call goes on from
     * wherever the buffer is then); no renegotiation (TLS 1.3 key updates are not
     * renegotiations and stay allowed). */
    SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION);
    if (o->ciphers != NULL && !SSL_CTX_set_cipher_list(ctx, o->ciphers)) {
        snprintf(err, errlen, "ssl_ciphers: no cipher can be selected from '%s'", o->ciphers);
        goto fail;
    }
    if (o->ca_file != NULL && readable("ssl_ca_certs", o->ca_file, 0, err, errlen) < 0) {
        goto fail;
    }
    if (o->ca_path != NULL && readable("ssl_ca_path", o->ca_path, 1, err, errlen) < 0) {
        goto fail;
    }
    if (o->ca_file != NULL || o->ca_path != NULL) {
        if (!SSL_CTX_load_verify_locations(ctx, o->ca_file, o->ca_path)) {
            snprintf(err, errlen, "%s: cannot load the certificates of '%s': %s",
                     o->ca_file ? "ssl_ca_certs" : "ssl_ca_path",
                     o->ca_file ? o->ca_file : o->ca_path, ssl_reason("invalid"));
            goto fail;
        }
    }
    else if (o->verify != BIO_TLS_VERIFY_NONE &&
             load_default_cas(ctx, t->ca_hint, sizeof t->ca_hint, err, errlen) < 0) {
        goto fail;
    }
    if (o->cert_file != NULL) {
        const char *key = o->key_file ? o->key_file : o->cert_file;
        if (readable("ssl_certfile", o->cert_file, 0, err, errlen) < 0 ||
            (o->key_file && readable("ssl_keyfile", o->key_file, 0, err, errlen) < 0)) {
            goto fail;
        }
        if (!SSL_CTX_use_certificate_chain_file(ctx, o->cert_file)) {
            snprintf(err, errlen, "ssl_certfile: cannot load the certificate of '%s': %s",
                     o->cert_file, ssl_reason("invalid"));
            goto fail;
        }
        key_password pw = {o->key_password, o->key_password_len};
        SSL_CTX_set_default_passwd_cb(ctx, password_cb);
        SSL_CTX_set_default_passwd_cb_userdata(ctx, &pw);
        int loaded = SSL_CTX_use_PrivateKey_file(ctx, key, SSL_FILETYPE_PEM);
        SSL_CTX_set_default_passwd_cb_userdata(ctx, NULL);  /* pw is ours, and goes now */
        if (!loaded) {
            const char *why = ssl_reason("invalid");
            int mismatch = strstr(why, "mismatch") != NULL;
            snprintf(err, errlen, "%s: cannot load the private key of '%s': %s%s",
                     o->key_file ? "ssl_keyfile" : "ssl_certfile", key, why,
                     mismatch ? " (not the key of ssl_certfile)"
                     : o->key_password ? " (wrong ssl_password?)"
                     : " (an encrypted key needs ssl_password)");
            goto fail;
        }
        if (!SSL_CTX_check_private_key(ctx)) {
            snprintf(err, errlen, "ssl_keyfile: the private key of '%s' does not match the "
                     "certificate of '%s'", key, o->cert_file);
            ERR_clear_error();
            goto fail;
        }
    }
    else if (o->key_file != NULL) {
        snprintf(err, errlen, "ssl_keyfile needs ssl_certfile");
        goto fail;
    }
    SSL_CTX_set_verify(ctx, o->verify == BIO_TLS_VERIFY_NONE ? SSL_VERIFY_NONE : SSL_VERIFY_PEER,
                       NULL);
    atomic_init(&t->refs, 1);
    t->ctx = ctx;
    t->check_hostname = o->verify != BIO_TLS_VERIFY_NONE && o->check_hostname;
    return t;

fail:
    ERR_clear_error();
    SSL_CTX_free(ctx);
    free(t);
    return NULL;
}

void
bio_tls_incref(bio_tls *t)
{
    atomic_fetch_add(&t->refs, 1);
}

void
bio_tls_decref(bio_tls *t)
{
    if (t != NULL && atomic_fetch_sub(&t->refs, 1) == 1) {
        SSL_CTX_free(t->ctx);
        free(t);
    }
}

/* ------------------------------------------------------------------ a connection */

/* What OpenSSL says went wrong with the last call on ssl (of context t, to host) that
 * returned rc; `hint` ends a "connection closed" message. */
static void
describe_ssl(SSL *ssl, const bio_tls *t, const char *host, const char *hint, int rc,
             const char *doing, char *err, size_t errlen)
{
    int e = SSL_get_error(ssl, rc);
    long verify = SSL_get_verify_result(ssl);
    if (e == SSL_ERROR_SSL && (verify == X509_V_ERR_HOSTNAME_MISMATCH ||
                               verify == X509_V_ERR_IP_ADDRESS_MISMATCH)) {
        snprintf(err, errlen, "SSL certificate verify failed: hostname mismatch (%s): the "
                 "server's certificate is not for '%s'", X509_verify_cert_error_string(verify),
                 host);
        ERR_clear_error();
    }
    else if (e == SSL_ERROR_SSL && verify != X509_V_OK) {
        /* No CA we trust vouches for it: with the default CA certificates, say which
         * (a private CA needs ssl_ca_certs). */
        int unknown_ca = verify == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
                         verify == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT ||
                         verify == X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE ||
                         verify == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
                         verify == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN;
        snprintf(err, errlen, "SSL certificate verify failed: %s%s",
                 X509_verify_cert_error_string(verify), unknown_ca ? t->ca_hint : "");
        ERR_clear_error();
    }
    else if (e == SSL_ERROR_SSL) {
        snprintf(err, errlen, "SSL error %s: %s", doing, ssl_reason("protocol error"));
    }
    else if (e == SSL_ERROR_SYSCALL && errno != 0) {
        snprintf(err, errlen, "SSL error %s: %s%s", doing, strerror(errno), hint);
        ERR_clear_error();
    }
    else {
        snprintf(err, errlen, "Connection closed by server%s%s%s.",
                 *doing ? " during " : "", doing, hint);  /* EOF without close_notify */
        ERR_clear_error();
    }
}

/* What OpenSSL says went wrong with the last call on c->ssl that returned rc. */
static void
describe(bio_client *c, int rc, const char *doing, char *err, size_t errlen)
{
    /* The server dropped us right after the handshake, before its first reply: with
     * TLS 1.3 that is how a refused (missing) client certificate often shows, its alert
     * lost with the reset. */
    const char *hint = "";
    if (SSL_get_error(c->ssl, rc) != SSL_ERROR_SSL && c->state == ST_HANDSHAKE &&
        SSL_CTX_get0_certificate(c->cfg.tls->ctx) == NULL) {
        hint = " (after the TLS handshake: does the server require a client certificate? "
               "ssl_certfile, ssl_keyfile)";
    }
    describe_ssl(c->ssl, c->cfg.tls, c->cfg.host, hint, rc, doing, err, errlen);
}

/* SNI and (when checking it) the name the certificate must have: host's. 0 or -1. */
static int
set_peer(SSL *ssl, const bio_tls *t, const char *host, char *err, size_t errlen)
{
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    if (!is_ip && !SSL_set_tlsext_host_name(ssl, host)) {  /* SNI: names only */
        snprintf(err, errlen, "SSL: cannot use '%s' as the server name", host);
        return -1;
    }
    if (t->check_hostname) {
        X509_VERIFY_PARAM *param = SSL_get0_param(ssl);
        int ok = is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host)
                       : (X509_VERIFY_PARAM_set_hostflags(
                              param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS),
                          X509_VERIFY_PARAM_set1_host(param, host, 0));
        if (!ok) {
            snprintf(err, errlen, "SSL: cannot check the certificate against '%s'", host);
            return -1;
        }
    }
    return 0;
}

int
io_tls_begin(bio_client *c, char *err, size_t errlen)
{
    ERR_clear_error();
    c->ssl = SSL_new(c->cfg.tls->ctx);
    if (c->ssl == NULL || !SSL_set_fd(c->ssl, c->fd)) {
        snprintf(err, errlen, "SSL: out of memory");
        goto fail;
    }
    if (set_peer(c->ssl, c->cfg.tls, c->cfg.host, err, errlen) < 0) {
        goto fail;
    }
    SSL_set_connect_state(c->ssl);
    c->tls_want_out = 1;  /* the ClientHello goes first */
    return 0;

fail:
    ERR_clear_error();
    SSL_free(c->ssl);
    c->ssl = NULL;
    return -1;
}

/* What a call that returned rc <= 0 waits for: 0 (c->tls_want_out set) or -1. */
static int
would_block(bio_client *c, int rc)
{
    switch (SSL_get_error(c->ssl, rc)) {
    case SSL_ERROR_WANT_READ:
        c->tls_want_out = 0;
        return 0;
    case SSL_ERROR_WANT_WRITE:
        c->tls_want_out = 1;
        return 0;
    default:
        return -1;
    }
}

int
io_tls_handshake(bio_client *c, char *err, size_t errlen)
{
    ERR_clear_error();
    errno = 0;
    int rc = SSL_do_handshake(c->ssl);
    if (rc == 1) {
        c->tls_want_out = 0;
        return 1;
    }
    if (would_block(c, rc) == 0) {
        return 0;
    }
    describe(c, rc, "during the handshake", err, errlen);
    c->tls_broken = 1;
    return -1;
}

ssize_t
io_tls_read(bio_client *c, char *buf, size_t len, char *err, size_t errlen)
{
    ERR_clear_error();
    errno = 0;
    size_t n = 0;
    int rc = SSL_read_ex(c->ssl, buf, len, &n);
    if (rc == 1) {
        c->tls_read_wants_out = 0;
        return (ssize_t)n;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        /* (WANT_WRITE: the peer's key update is answered by a write first) */
        c->tls_read_wants_out = e == SSL_ERROR_WANT_WRITE;
        return 0;
    }
    if (e == SSL_ERROR_ZERO_RETURN) {
        snprintf(err, errlen, "Connection closed by server.");  /* its close_notify */
        ERR_clear_error();
        return -1;
    }
    describe(c, rc, "reading", err, errlen);
    c->tls_broken = 1;
    return -1;
}

ssize_t
io_tls_write(bio_client *c, const char *buf, size_t len, char *err, size_t errlen)
{
    ERR_clear_error();
    errno = 0;
    size_t n = 0;
    int rc = SSL_write_ex(c->ssl, buf, len, &n);
    c->tls_write_wants_in = 0;
    if (rc == 1) {
        return (ssize_t)n;
    }
    int e = SSL_get_error(c->ssl, rc);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        c->tls_write_wants_in = e == SSL_ERROR_WANT_READ;
        return 0;  /* writable again, or after a read: io_flush_out is tried every pass */
    }
    describe(c, rc, "writing", err, errlen);
    c->tls_broken = 1;
    return -1;
}

int
io_tls_pending(bio_client *c)
{
    return c->ssl != NULL && SSL_pending(c->ssl) > 0;
}

void
io_tls_end(bio_client *c)
{
    if (c->ssl == NULL) {
        return;
    }
    if (!c->tls_broken && SSL_is_init_finished(c->ssl)) {
        ERR_clear_error();
        (void)SSL_shutdown(c->ssl);  /* our close_notify, if the socket takes it now */
    }
    ERR_clear_error();
    SSL_free(c->ssl);
    c->ssl = NULL;
    c->tls_want_out = c->tls_read_wants_out = c->tls_write_wants_in = c->tls_broken = 0;
}

/* ------------------------------------------------------------------ blocking sessions */

/* For the sentinel threads (io_sentinel.c), never the I/O thread: a session on a
 * connected non-blocking socket whose calls wait with poll() until a deadline. A call
 * OpenSSL cannot finish yet (SSL_ERROR_WANT_READ / WANT_WRITE) is retried once the
 * socket is ready; a deadline that passes there leaves the session sound (a read
 * that timed out may be retried). Any other failure is fatal: the session is then
 * only freed (io_tls_blocking_close with broken set), never used again. */

/* Wait until fd is ready for what the call that returned rc wants: 1 ready, 0 the
 * deadline passed, -1 not a wait (a fatal error). */
static int
blocking_wait(SSL *ssl, int fd, int rc, double deadline)
{
    int e = SSL_get_error(ssl, rc);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE) {
        return -1;
    }
    struct pollfd p = {.fd = fd, .events = e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT};
    for (;;) {
        double left = deadline - bio_now();
        int n = left > 0 ? poll(&p, 1, (int)ceil(left * 1000)) : 0;
        if (n < 0 && errno == EINTR) {
            continue;
        }
        return n > 0 ? 1 : n == 0 ? 0 : -1;
    }
}

SSL *
io_tls_blocking_connect(bio_tls *t, int fd, const char *host, double deadline, char *err,
                        size_t errlen)
{
    ERR_clear_error();
    SSL *ssl = SSL_new(t->ctx);
    if (ssl == NULL || !SSL_set_fd(ssl, fd)) {
        snprintf(err, errlen, "SSL: out of memory");
        goto fail;
    }
    if (set_peer(ssl, t, host, err, errlen) < 0) {
        goto fail;
    }
    SSL_set_connect_state(ssl);
    for (;;) {
        ERR_clear_error();
        errno = 0;
        int rc = SSL_do_handshake(ssl);
        if (rc == 1) {
            return ssl;
        }
        int w = blocking_wait(ssl, fd, rc, deadline);
        if (w == 1) {
            continue;
        }
        if (w == 0) {
            snprintf(err, errlen, "timeout in the TLS handshake");
        }
        else {
            describe_ssl(ssl, t, host, "", rc, "during the handshake", err, errlen);
        }
        goto fail;
    }

fail:
    ERR_clear_error();
    SSL_free(ssl);  /* (no close_notify: not a sound session) */
    return NULL;
}

ssize_t
io_tls_blocking_read(SSL *ssl, bio_tls *t, const char *host, char *buf, size_t len,
                     double deadline, int *broken, char *err, size_t errlen)
{
    int fd = SSL_get_fd(ssl);
    for (;;) {
        ERR_clear_error();
        errno = 0;
        size_t n = 0;
        int rc = SSL_read_ex(ssl, buf, len, &n);
        if (rc == 1) {
            return (ssize_t)n;
        }
        if (SSL_get_error(ssl, rc) == SSL_ERROR_ZERO_RETURN) {
            snprintf(err, errlen, "connection closed");  /* its close_notify */
            ERR_clear_error();
            *broken = 1;  /* (nothing more to say on it) */
            return -1;
        }
        int w = blocking_wait(ssl, fd, rc, deadline);
        if (w == 1) {
            continue;
        }
        if (w == 0) {
            return 0;  /* WANT_READ/WANT_WRITE past the deadline: the session is sound */
        }
        describe_ssl(ssl, t, host, "", rc, "reading", err, errlen);
        *broken = 1;
        return -1;
    }
}

int
io_tls_blocking_write(SSL *ssl, bio_tls *t, const char *host, const char *buf, size_t len,
                      double deadline, int *broken, char *err, size_t errlen)
{
    int fd = SSL_get_fd(ssl);
    size_t pos = 0;
    while (pos < len) {
        ERR_clear_error();
        errno = 0;
        size_t n = 0;
        int rc = SSL_write_ex(ssl, buf + pos, len - pos, &n);
        if (rc == 1) {
            pos += n;
            continue;
        }
        int w = blocking_wait(ssl, fd, rc, deadline);
        if (w == 1) {
            continue;
        }
        if (w == 0) {
            snprintf(err, errlen, "timeout writing");
            *broken = 1;  /* (a write cut short is not retried: the session goes) */
        }
        else {
            describe_ssl(ssl, t, host, "", rc, "writing", err, errlen);
            *broken = 1;
        }
        return -1;
    }
    return 0;
}

void
io_tls_blocking_close(SSL *ssl, int broken)
{
    if (ssl == NULL) {
        return;
    }
    if (!broken) {
        ERR_clear_error();
        (void)SSL_shutdown(ssl);  /* our close_notify, if the socket takes it now */
    }
    ERR_clear_error();
    SSL_free(ssl);
}
