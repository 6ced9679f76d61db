/* Functions exported from libkbox.so for the Python binding (kbox/native.py) carry KBOX_API;
 * everything else stays hidden.  Their prototypes are repeated in kbox/cdefs/<area>.h. */
#ifndef KBOX_LIB_API_H
#define KBOX_LIB_API_H
#define KBOX_API __attribute__((visibility("default")))
#endif
