/* rc_cluster.c: RedisCache's Redis Cluster options (cluster=, startup_nodes=,
 * read_from_replicas=) checked against each other and the rest (see rc_internal.h).
 * The routing itself is the I/O thread's (io_cluster.c, io_fanout.c). */
#include "rc_internal.h"

/* Startup nodes one cache may name (each is tried in turn). */
#define MAX_STARTUP_NODES 64

int
rc_cluster_options(PyObject *const opt[RC_CL_NOPTS], int has_address, int has_unix,
                   int has_sentinels, int db, rc_cluster_cfg *out)
{
    PyObject *cluster = opt[RC_CL_CLUSTER], *nodes = opt[RC_CL_STARTUP],
             *replicas = opt[RC_CL_REPLICAS];
    out->mode = BIO_CLUSTER_AUTO;
    out->nodes = NULL;
    out->replicas = 0;
    if (cluster != NULL && cluster != Py_None) {
        if (!PyBool_Check(cluster)) {
            PyErr_Format(PyExc_TypeError, "cluster must be None, True or False, not %.100s",
                         Py_TYPE(cluster)->tp_name);
            return -1;
        }
        out->mode = cluster == Py_True ? BIO_CLUSTER_ON : BIO_CLUSTER_OFF;
    }
    if (replicas != NULL && replicas != Py_None &&
        (out->replicas = PyObject_IsTrue(replicas)) < 0) {
        return -1;
    }
    int has_nodes = nodes != NULL && nodes != Py_None;
    const char *why = NULL;
    if (has_nodes && has_address) {
        why = "startup_nodes name the cluster: give either startup_nodes or "
              "host/port/unix_socket_path, not both";
    }
    else if ((has_nodes || out->mode == BIO_CLUSTER_ON) && has_sentinels) {
        why = "sentinels serve one primary: a Redis Cluster is reached through "
              "startup_nodes or host/port, not sentinels";
    }
    else if (has_nodes && out->mode == BIO_CLUSTER_OFF) {
        why = "startup_nodes are a cluster's nodes, and cluster=False says it is none";
    }
    else if (out->mode == BIO_CLUSTER_ON && has_unix) {
        why = "cluster=True needs host/port or startup_nodes (a unix socket reaches one "
              "server)";
    }
    else if ((out->mode == BIO_CLUSTER_ON || has_nodes) && db != 0) {
        why = "a Redis Cluster has database 0 only (db must be 0)";
    }
    if (why != NULL) {
        PyErr_SetString(PyExc_ValueError, why);
        return -1;
    }
    if (has_sentinels || has_unix) {
        out->mode = BIO_CLUSTER_OFF;  /* (one server, by construction) */
    }
    if (out->replicas && out->mode == BIO_CLUSTER_OFF) {
        PyErr_SetString(PyExc_ValueError, "read_from_replicas is for a Redis Cluster (its "
                        "primaries' replicas); this cache is one server's");
        return -1;
    }
    if (has_nodes) {
        out->nodes = rc_address_list(nodes, "startup_nodes", "startup node",
                                     MAX_STARTUP_NODES);
        if (out->nodes == NULL) {
            return -1;
        }
    }
    return 0;
}
