// The AVX-512 kernels compiled with AVX512_VNNI (see kernels_avx512.cpp).
#define QTORCHEXT_AVX512_VNNI 1
#include "kernels_avx512.cpp"
