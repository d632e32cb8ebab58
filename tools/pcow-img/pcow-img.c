/*
 * pcow-img: offline management of pcow images
 *
 * The command line follows qemu-img: "pcow-img COMMAND [options] FILE...".
 *
 * This work is licensed under the terms of the GNU GPL, version 2 or later.
 */
#include <locale.h>
#include <string.h>

#include "pcow-img.h"

#ifndef PCOW_IMG_VERSION
#define PCOW_IMG_VERSION "0.1.0"
#endif

typedef struct ImgCommand {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *synopsis;
} ImgCommand;

static const ImgCommand commands[] = {
    { "create", img_create,
      "create [-f pcow|raw] [-o options] [-b BASE [-F pcow|raw]] FILE "
      "[SIZE]\n"
      "    create CLUSTER_KIB SIZE_GIB FILE [BASE]   (legacy form)" },
    { "info", img_info,
      "info [--output=human|json] [--backing-chain] [-U] FILE" },
    { "check", img_check,
      "check [-r leaks|all] [--output=human|json] [-U] FILE" },
    { "snapshot", img_snapshot,
      "snapshot [-U] -l | -c NAME | -a NAME | -d NAME FILE" },
    { "clone", img_clone, "clone [-q] [-f pcow] TEMPLATE@SNAPSHOT NEW" },
    { "rebase", img_rebase, "rebase [-u] [-U] -b BASE [-F pcow|raw] FILE" },
    { "commit", img_commit, "commit [-d] FILE" },
    { "convert", img_convert,
      "convert [-p] [-n] [-f fmt] [-O fmt] [-o options] [-B BASE] SRC DST" },
    { "map", img_map, "map [--output=human|json] [-U] FILE" },
    { "measure", img_measure,
      "measure [-O pcow] [-o cluster_size=N] [--output=human|json]\n"
      "            (--size SIZE | [-f fmt] SRC)" },
    { "resize", img_resize, "resize [--shrink] [-f fmt] FILE [+|-]SIZE" },
    { "compare", img_compare, "compare [-s] [-U] [-f fmt] [-F fmt] A B" },
    { "compact", img_compact, "compact [-q] [--output=human|json] FILE" },
};

static void print_help(void)
{
    printf("pcow-img version " PCOW_IMG_VERSION "\n"
           "usage: pcow-img [--help | --version] COMMAND [options]\n"
           "Manage pcow images (thin-provisioned virtual persistent memory)."
           "\n\nCommands:\n");
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        printf("  %s\n", commands[i].synopsis);
    }
    printf("\nSizes take an optional suffix K, M, G or T (powers of 1024)."
           "\n'pcow-img COMMAND --help' describes a command.\n");
}

static void print_version(void)
{
    printf("pcow-img version " PCOW_IMG_VERSION
           ", pcow format version %d\n", PCOW_VERSION);
}

int main(int argc, char **argv)
{
    const char *cmd;

    setlocale(LC_ALL, "");
    setvbuf(stdout, NULL, _IOLBF, 0);

    if (argc < 2) {
        img_error(NULL, "missing command (try 'pcow-img --help')");
        return EXIT_ERR;
    }
    cmd = argv[1];
    if (strcmp(cmd, "--help") == 0 || strcmp(cmd, "-h") == 0 ||
        strcmp(cmd, "help") == 0) {
        print_help();
        return EXIT_OK;
    }
    if (strcmp(cmd, "--version") == 0 || strcmp(cmd, "-V") == 0) {
        print_version();
        return EXIT_OK;
    }
    for (size_t i = 0; i < G_N_ELEMENTS(commands); i++) {
        if (strcmp(cmd, commands[i].name) == 0) {
            return commands[i].fn(argc - 1, argv + 1);
        }
    }
    if (cmd[0] == '-') {
        img_error(NULL, "unknown option '%s' (try 'pcow-img --help')", cmd);
    } else {
        img_error(NULL, "unknown command '%s' (try 'pcow-img --help')", cmd);
    }
    return EXIT_ERR;
}
