/* host.c: the `exo` executable: a C host around LuaJIT.
 *
 * It creates the one libuv loop, hands it to luv before luv opens (so C
 * handles and Lua handles share it, as Neovim does), preloads luv and cjson,
 * finds the Lua sources relative to the executable (never the current
 * directory), and runs lua/exo/cli.lua with the command-line arguments. The
 * engine's C API is reached from Lua through the FFI: the executable exports
 * libexo's symbols (linked whole, with --export-dynamic). */
#define _GNU_SOURCE
#include <lauxlib.h>
#include <limits.h>
#include <signal.h>
#include <lua.h>
#include <lualib.h>
#include <luajit.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include <luv/luv.h>

#include "exo.h"

extern int luaopen_cjson(lua_State *L);

static void close_handle(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h)) uv_close(h, NULL);
}

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The lua/ folder: EXO_LUA_DIR if set, else beside the build tree
 * (<exe>/../lua) or the install tree (<exe>/../share/exo/lua). */
static int find_lua_dir(char *out, size_t cap, char *exe, size_t exe_cap)
{
    ssize_t n = readlink("/proc/self/exe", exe, exe_cap - 1);
    if (n <= 0) return -1;
    exe[n] = 0;
    const char *env = getenv("EXO_LUA_DIR");
    char probe[PATH_MAX + 64];
    if (env && *env) {
        snprintf(out, cap, "%s", env);
        return 0;
    }
    char dir[PATH_MAX];
    snprintf(dir, sizeof dir, "%s", exe);
    char *slash = strrchr(dir, '/');
    if (slash) *slash = 0;
    const char *candidates[] = {"%s/../lua", "%s/../share/exo/lua", "%s/lua"};
    for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
        snprintf(out, cap, candidates[i], dir);
        snprintf(probe, sizeof probe, "%s/exo/cli.lua", out);
        if (is_file(probe)) {
            char *real = realpath(out, NULL);
            if (real) {
                snprintf(out, cap, "%s", real);
                free(real);
            }
            return 0;
        }
    }
    return -1;
}

static int traceback(lua_State *L)
{
    const char *msg = lua_tostring(L, 1);
    if (!msg) msg = "(error object is not a string)";
    luaL_traceback(L, L, msg, 1);
    return 1;
}

/* OpenBLAS starts its own worker threads when the library loads, before
 * main, sized by OPENBLAS_NUM_THREADS or the core count. exo never uses them
 * (its pool parallelises over tiles and asks OpenBLAS for one thread), and
 * when memory is short one of them loops forever in blas_memory_alloc, so a
 * failed load could never exit (OpenBLAS joins it at exit). So the process
 * starts again, once, with OPENBLAS_NUM_THREADS=1 set: no workers at all. */
static void single_threaded_openblas(char **argv)
{
    if (getenv("OPENBLAS_NUM_THREADS")) return;
    setenv("OPENBLAS_NUM_THREADS", "1", 1);
    execv("/proc/self/exe", argv);
    /* No /proc: go on as we are (the workers only matter when memory runs out). */
}

int main(int argc, char **argv)
{
    single_threaded_openblas(argv);
    char lua_dir[PATH_MAX], exe[PATH_MAX];
    if (find_lua_dir(lua_dir, sizeof lua_dir, exe, sizeof exe) != 0) {
        fprintf(stderr, "exo: cannot find the Lua sources (lua/exo/cli.lua) beside %s; set EXO_LUA_DIR\n", argv[0]);
        return 1;
    }

    /* A peer that closes its socket must cost one failed write (EPIPE), not
     * the process. */
    signal(SIGPIPE, SIG_IGN);

    uv_loop_t loop;
    if (uv_loop_init(&loop) != 0) {
        fprintf(stderr, "exo: cannot create the event loop\n");
        return 1;
    }
    lua_State *L = luaL_newstate();
    if (!L) {
        fprintf(stderr, "exo: cannot create the Lua state\n");
        return 1;
    }
    luaL_openlibs(L);

    /* package.path: our sources first. */
    lua_getglobal(L, "package");
    lua_pushfstring(L, "%s/?.lua;%s/?/init.lua;", lua_dir, lua_dir);
    lua_getfield(L, -2, "path");
    lua_concat(L, 2);
    lua_setfield(L, -2, "path");

    /* package.preload.luv / cjson */
    lua_getfield(L, -1, "preload");
    luv_set_loop(L, &loop);
    exo_runtime_set_loop(&loop); /* the wire transport shares it */
    lua_pushcfunction(L, luaopen_luv);
    lua_setfield(L, -2, "luv");
    lua_pushcfunction(L, luaopen_cjson);
    lua_setfield(L, -2, "cjson");
    lua_pop(L, 1);

    /* package.loaded["exo.host"] = { lua_dir, exe } */
    lua_getfield(L, -1, "loaded");
    lua_newtable(L);
    lua_pushstring(L, lua_dir);
    lua_setfield(L, -2, "lua_dir");
    lua_pushstring(L, exe);
    lua_setfield(L, -2, "exe");
    lua_setfield(L, -2, "exo.host");
    lua_pop(L, 2);

    /* The global `arg`, as the standalone interpreter sets it. */
    lua_createtable(L, argc, 1);
    for (int i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i);
    }
    lua_setglobal(L, "arg");

    int status = 1;
    lua_pushcfunction(L, traceback);
    char cli[PATH_MAX + 32];
    snprintf(cli, sizeof cli, "%s/exo/cli.lua", lua_dir);
    if (luaL_loadfile(L, cli) != 0) {
        fprintf(stderr, "exo: %s\n", lua_tostring(L, -1));
    } else {
        for (int i = 1; i < argc; i++) lua_pushstring(L, argv[i]);
        if (lua_pcall(L, argc - 1, 1, -(argc + 1)) != 0) {
            fprintf(stderr, "exo: %s\n", lua_tostring(L, -1));
        } else {
            status = lua_isnumber(L, -1) ? (int)lua_tointeger(L, -1) : 0;
        }
    }
    /* Handles left open (the script failed, or returned with timers or
     * sockets alive) are closed while Lua still runs, so luv's close
     * callbacks find their state; lua_close then frees what they held. */
    exo_engine_wait_idle(); /* nothing computes on what is about to be freed */
    uv_walk(&loop, close_handle, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    lua_close(L);
    uv_run(&loop, UV_RUN_NOWAIT);
    uv_loop_close(&loop);
    return status;
}
