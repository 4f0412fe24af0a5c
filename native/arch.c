/* arch.c: the table of supported architectures.
 *
 * Each entry comes from one file in native/models/ and is keyed by the
 * general.architecture string GGUF converters write. This is the one place
 * that lists architectures: a new family is a new file plus one line here. */
#include <pthread.h>
#include <string.h>

#include "model.h"

extern const exo_arch exo__arch_llama, exo__arch_qwen2, exo__arch_qwen3, exo__arch_gemma3, exo__arch_phi3;

static const exo_arch *const archs[] = {
    &exo__arch_llama, &exo__arch_qwen2, &exo__arch_qwen3, &exo__arch_gemma3, &exo__arch_phi3,
};
#define N_ARCHS (sizeof archs / sizeof archs[0])

const exo_arch *exo__arch_find(const char *name)
{
    for (size_t i = 0; i < N_ARCHS; i++)
        if (!strcmp(archs[i]->name, name)) return archs[i];
    return NULL;
}

static char names[256];
static pthread_once_t names_once = PTHREAD_ONCE_INIT;

static void join_names(void)
{
    for (size_t i = 0; i < N_ARCHS; i++) {
        if (i) strncat(names, ", ", sizeof names - strlen(names) - 1);
        strncat(names, archs[i]->name, sizeof names - strlen(names) - 1);
    }
}

const char *exo__arch_names(void)
{
    pthread_once(&names_once, join_names);
    return names;
}
