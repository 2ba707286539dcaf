/* SPDX-License-Identifier: Apache-2.0 */
/* The flow hash: Linux's jhash2() (include/linux/jhash.h), bit for bit the same as
 * fulcrum-core's `hash::jhash2` (crates/core/src/hash.rs). Plain C, no BPF headers, so
 * a host test compiles it too (crates/xdp/tests/jhash_host.rs). */
#ifndef FULCRUM_JHASH_H
#define FULCRUM_JHASH_H

#ifdef __bpf__
#include <linux/types.h>
typedef __u32 fx_u32;
#else
#include <stdint.h>
typedef uint32_t fx_u32;
#endif

#ifndef FX_INLINE
#define FX_INLINE static inline __attribute__((always_inline))
#endif

#define FX_JHASH_INITVAL 0xdeadbeefU
/* The seed of every flow hash ("Fulc"): fulcrum_core::hash::FLOW_HASH_SEED. */
#define FX_FLOW_HASH_SEED 0x46756c63U

FX_INLINE fx_u32 fx_rol32(fx_u32 w, unsigned s) { return (w << s) | (w >> (32 - s)); }

#define fx_jhash_mix(a, b, c)                     \
	do {                                          \
		a -= c; a ^= fx_rol32(c, 4);  c += b; \
		b -= a; b ^= fx_rol32(a, 6);  a += c; \
		c -= b; c ^= fx_rol32(b, 8);  b += a; \
		a -= c; a ^= fx_rol32(c, 16); c += b; \
		b -= a; b ^= fx_rol32(a, 19); a += c; \
		c -= b; c ^= fx_rol32(b, 4);  b += a; \
	} while (0)

#define fx_jhash_final(a, b, c)               \
	do {                                      \
		c ^= b; c -= fx_rol32(b, 14);     \
		a ^= c; a -= fx_rol32(c, 11);     \
		b ^= a; b -= fx_rol32(a, 25);     \
		c ^= b; c -= fx_rol32(b, 16);     \
		a ^= c; a -= fx_rol32(c, 4);      \
		b ^= a; b -= fx_rol32(a, 14);     \
		c ^= b; c -= fx_rol32(b, 24);     \
	} while (0)

/* jhash2(k, len, initval). Always inlined: callers pass a constant `len` (at most 10),
 * so the compiler unrolls the loop and the verifier sees straight-line code. */
FX_INLINE fx_u32 fx_jhash2(const fx_u32 *k, fx_u32 len, fx_u32 initval)
{
	fx_u32 a, b, c;

	a = b = c = FX_JHASH_INITVAL + (len << 2) + initval;
	while (len > 3) {
		a += k[0];
		b += k[1];
		c += k[2];
		fx_jhash_mix(a, b, c);
		len -= 3;
		k += 3;
	}
	switch (len) {
	case 3: c += k[2]; /* fallthrough */
	case 2: b += k[1]; /* fallthrough */
	case 1: a += k[0];
		fx_jhash_final(a, b, c);
		break;
	case 0:
		break;
	}
	return c;
}

#endif
