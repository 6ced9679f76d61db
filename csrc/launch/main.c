#include "lib/sys.h"
#include "lib/str.h"
int kbox_main(uint64_t *sp);
int kbox_main(uint64_t *sp)
{
    kbox_write(1, "hello\n", 6);
    kbox_exit_group(0);
}
