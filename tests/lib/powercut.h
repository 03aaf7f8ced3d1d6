/*
 * powercut.h: power-loss images for tests.  A server run with
 * LD_PRELOAD=<libpowercut_shim.so>, POWERCUT_ROOT=<its data> and
 * POWERCUT_STORE=<an empty directory> records what its fsyncs made durable
 * (powercut_shim.c); after a kill -9, powercut_image() builds a tree a power
 * cut at that moment could have left, for the server to restart on.
 */
#ifndef POWERCUT_H
#define POWERCUT_H

#include <stdbool.h>

/* Builds in out (which must not exist) the tree under root after a power
 * cut, from the shim's record in store and root's files as they are now.
 * seed 0: exactly the durable record (every unsynced change lost); another
 * seed: each unsynced change kept or lost at random, per directory entry
 * and per 512-byte sector, with a file's length either its durable or its
 * current one (a torn write).  False with a message on stderr on failure. */
bool powercut_image(const char *store, const char *root, const char *out, unsigned seed);

/* The path of the shim library (set by the build), or NULL. */
const char *powercut_shim_path(void);

#endif
