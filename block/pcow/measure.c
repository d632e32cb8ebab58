/*
 * libpcow measure: the file size a new image needs for given data, as
 * qcow2_measure does for qcow2.  Tools walk their source through the
 * callbacks; how clusters and L2 tables add up stays in the library.
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pcow-int.h"

uint64_t pcow_round_to_pages(uint64_t size)
{
    /* Wraps to 0 past the last page: pcow_geometry_for() refuses 0 */
    return (size + PCOW_PAGE_SIZE - 1) & ~(uint64_t)(PCOW_PAGE_SIZE - 1);
}

/*
 * Count the clusters of @src that hold any non-zero byte, and the L2
 * tables that map them.  A callback's error is returned as it is.
 */
static int count_clusters(const pcow_measure_source *src,
                          const pcow_geometry *g, uint64_t *data_clusters,
                          uint64_t *l2_tables)
{
    uint64_t cs = g->cluster_size, off = 0, last_l2 = UINT64_MAX;
    uint8_t *buf = malloc(cs);
    int ret = 0;

    if (!buf) {
        return -ENOMEM;
    }
    while (off < src->size) {
        uint64_t max = cs - off % cs, pnum = 0;
        int st = src->block_status(src->opaque, off, max, &pnum);
        bool need = false;

        if (st < 0) {
            ret = st;
            break;
        }
        if (pnum == 0 || pnum > max) {
            pnum = max;         /* never loop forever on a bad callback */
        }
        if (st == 1) {
            ret = src->read(src->opaque, off, buf, pnum);
            if (ret < 0) {
                break;
            }
            need = !pcow_is_zero(buf, pnum);
        }
        if (need) {
            uint64_t v = off / cs;

            (*data_clusters)++;
            if (v / g->l2_entries != last_l2) {
                last_l2 = v / g->l2_entries;
                (*l2_tables)++;
            }
            off = (v + 1) * cs;     /* the rest of the cluster is counted */
        } else {
            off += pnum;
        }
    }
    free(buf);
    return ret;
}

int pcow_measure(uint64_t virtual_size, uint32_t cluster_size,
                 uint32_t cow_unit, const pcow_measure_source *src,
                 pcow_measure_result *res, pcow_error *err)
{
    uint64_t data_clusters = 0, l2_tables = 0;
    pcow_geometry g;
    int ret;

    ret = pcow_geometry_for(virtual_size, cluster_size, cow_unit, &g, err);
    if (ret < 0) {
        return ret;
    }
    if (src) {
        ret = count_clusters(src, &g, &data_clusters, &l2_tables);
        if (ret < 0) {
            return ret;
        }
    }
    memset(res, 0, sizeof(*res));
    res->geometry = g;
    res->required = g.empty_size + (l2_tables + data_clusters) *
                    g.cluster_size;
    res->fully_allocated = g.empty_size + (g.l1_size + g.clusters) *
                           g.cluster_size;
    return 0;
}
