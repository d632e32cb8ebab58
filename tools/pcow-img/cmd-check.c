/*
 * pcow-img check: consistency check and repair
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <getopt.h>
#include <string.h>

#include "pcow-img.h"

static const char check_help[] =
"usage: pcow-img check [-r leaks|all] [--output=human|json] [-U] FILE\n"
"\n"
"Check the consistency of FILE; with -r, repair leaks (leaks) or leaks\n"
"and errors (all).  Exit status: 0 no problem, 1 the check could not be\n"
"completed, 2 corruptions, 3 leaked clusters only.\n";

typedef struct CheckArgs {
    bool json, force_share, quiet;
    unsigned repair;
    const char *file;
} CheckArgs;

/* 1: done (help printed), 0: go on, -1: error (reported) */
static int check_parse_options(int argc, char **argv, CheckArgs *a)
{
    enum { OPT_OUTPUT = 256 };
    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "output", required_argument, NULL, OPT_OUTPUT },
        { "repair", required_argument, NULL, 'r' },
        { "force-share", no_argument, NULL, 'U' },
        { NULL, 0, NULL, 0 },
    };
    int c;

    optind = 0;
    opterr = 0;
    while ((c = getopt_long(argc, argv, ":hr:Uqf:", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            fputs(check_help, stdout);
            return 1;
        case 'r':
            if (strcmp(optarg, "leaks") == 0) {
                a->repair = PCOW_REPAIR_LEAKS;
            } else if (strcmp(optarg, "all") == 0) {
                a->repair = PCOW_REPAIR_LEAKS | PCOW_REPAIR_ERRORS;
            } else {
                img_error(NULL, "check: -r must be 'leaks' or 'all', not "
                          "'%s'", optarg);
                return -1;
            }
            break;
        case 'U':
            a->force_share = true;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'f':
            if (strcmp(optarg, "pcow") != 0) {
                img_error(NULL, "check: only pcow images can be checked");
                return -1;
            }
            break;
        case OPT_OUTPUT:
            if (img_parse_output("check", optarg, &a->json) < 0) {
                return -1;
            }
            break;
        default:
            img_bad_option("check", argv, c);
            return -1;
        }
    }
    if (argc - optind != 1) {
        img_usage_error("check", "expecting one file name");
        return -1;
    }
    a->file = argv[optind];
    return 0;
}

static void check_print_json(const char *file, const pcow_check_result *res)
{
    ImgJson j;

    json_init(&j);
    json_begin_object(&j, NULL);
    json_str(&j, "filename", file);
    json_str(&j, "format", "pcow");
    json_u64(&j, "check-errors", 0);
    json_u64(&j, "image-end-offset", res->image_end_offset);
    json_u64(&j, "total-clusters", res->total_clusters);
    json_u64(&j, "allocated-clusters", res->allocated_clusters);
    json_u64(&j, "fragmented-clusters", res->fragmented_clusters);
    json_u64(&j, "compressed-clusters", 0);
    json_u64(&j, "vm-state-clusters", res->vm_state_clusters);
    json_u64(&j, "corruptions", res->corruptions);
    json_u64(&j, "leaks", res->leaks);
    json_u64(&j, "stale-mappings", res->stale_entries);
    json_u64(&j, "corruptions-fixed", res->corruptions_fixed);
    json_u64(&j, "leaks-fixed", res->leaks_fixed);
    if (res->first_problem[0]) {
        json_str(&j, "first-problem", res->first_problem);
    }
    json_end_object(&j);
    json_print(&j);
}

/* What is left after a repair: corruptions, then leaks */
static void check_print_problems(const pcow_check_result *res)
{
    if (res->corruptions) {
        printf("\n%" PRIu64 " errors were found on the image.\n"
               "Data may be corrupted, or further writes to the image "
               "may corrupt it.\n", res->corruptions);
        if (res->first_problem[0]) {
            g_autofree char *fp = pcow_escape_text(res->first_problem);

            printf("First problem: %s\n", fp);
        }
    }
    if (res->leaks) {
        printf("\n%" PRIu64 " leaked clusters were found on the image.\n"
               "This means waste of disk space, but no harm to data.\n",
               res->leaks);
        if (res->stale_entries) {
            printf("Of those, %" PRIu64 " are still mapped beyond the "
                   "virtual size (a shrink was interrupted); they "
                   "never show, and a repair or the next read-write "
                   "open clears them.\n", res->stale_entries);
        }
    }
}

static void check_print_human(const pcow_check_result *res)
{
    if (res->leaks_fixed || res->corruptions_fixed) {
        printf("The following inconsistencies were found and repaired:"
               "\n\n    %" PRIu64 " leaked clusters\n    %" PRIu64
               " corruptions\n\nDouble checking the fixed image now...\n",
               res->leaks_fixed, res->corruptions_fixed);
    }
    if (res->corruptions == 0 && res->leaks == 0) {
        printf("No errors were found on the image.\n");
    }
    check_print_problems(res);
    if (res->total_clusters) {
        printf("%" PRIu64 "/%" PRIu64 " = %0.2f%% allocated, %0.2f%% "
               "fragmented, 0.00%% compressed clusters\n",
               res->allocated_clusters, res->total_clusters,
               100.0 * res->allocated_clusters / res->total_clusters,
               res->allocated_clusters ?
               100.0 * res->fragmented_clusters / res->allocated_clusters :
               0.0);
    }
    if (res->vm_state_clusters) {
        printf("%" PRIu64 " clusters hold the VM state of snapshots\n",
               res->vm_state_clusters);
    }
    if (res->image_end_offset) {
        printf("Image end offset: %" PRIu64 "\n", res->image_end_offset);
    }
}

int img_check(int argc, char **argv)
{
    CheckArgs a = { 0 };
    pcow_check_result res;
    pcow_error err = { 0 };
    int c, ret;

    c = check_parse_options(argc, argv, &a);
    if (c != 0) {
        return c > 0 ? EXIT_OK : EXIT_ERR;
    }
    if (a.repair && a.force_share) {
        img_error(a.file, "-r and -U cannot be combined (repair needs the "
                  "image's write lock)");
        return EXIT_ERR;
    }
    if (img_require_pcow(a.file) < 0) {
        return EXIT_ERR;
    }
    memset(&res, 0, sizeof(res));
    ret = pcow_check(a.file, a.repair, a.force_share, &res, &err);
    if (ret < 0 && res.corruptions == 0) {
        img_pcow_error(a.file, &err, ret);
        return EXIT_ERR;
    }
    /* After a repair, corruptions and leaks are what is left. */
    if (a.json) {
        check_print_json(a.file, &res);
    } else if (!a.quiet) {
        check_print_human(&res);
    }
    if (res.corruptions) {
        return 2;
    }
    return res.leaks ? 3 : EXIT_OK;
}
