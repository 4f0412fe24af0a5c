/* cpu_features.c: the CPU feature probe (cpu_features.h).
 *
 * __builtin_cpu_supports checks that the OS saves the YMM (and ZMM) state
 * too; clang does not know the name "f16c", so that bit (CPUID.1:ECX.29) is
 * read directly. The two environment switches are read here and nowhere
 * else: tests run the AVX2 and scalar kernels on a machine that has more. */
#include "cpu_features.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#define CPU_X86 1
#else
#define CPU_X86 0
#endif

static exo_cpu_features features;
static pthread_once_t probe_once = PTHREAD_ONCE_INIT;

static bool env_flag(const char *name)
{
    const char *v = getenv(name);
    return v && *v && strcmp(v, "0") != 0;
}

static void probe(void)
{
#if CPU_X86
    if (env_flag("EXO_FORCE_SCALAR")) return;
    unsigned eax, ebx, ecx, edx;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) return;
    if (!__get_cpuid(1, &eax, &ebx, &ecx, &edx) || !((ecx >> 29) & 1u)) return;
    features.avx2 = true;
    if (env_flag("EXO_DISABLE_AVX512")) return;
    features.avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni");
#endif
}

const exo_cpu_features *exo__cpu_features_get(void)
{
    pthread_once(&probe_once, probe);
    return &features;
}
