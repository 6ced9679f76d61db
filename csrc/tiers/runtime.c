/* The in-process runtime's state (runtime.h), defined apart from the files that use it so
 * that none of them depends on another for it. */
#include "tiers/runtime.h"

struct kbox_runtime kbox_rt;
uint8_t kbox_trap_fast[KBOX_NR_MAX];
int kbox_own_fd[KBOX_OWN_FDS] = { [0 ... KBOX_OWN_FDS - 1] = -1 };
