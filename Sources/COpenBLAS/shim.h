#include <cblas.h>
// glibc's malloc tuning (mallopt, M_MMAP_THRESHOLD): Numerics keeps step-sized buffers in the heap.
#include <malloc.h>
