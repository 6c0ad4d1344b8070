"""FFT sizes with small prime factors: an FFT of a size with a large prime factor is many
times slower than one a few samples longer."""

from __future__ import annotations

import bisect


def is_smooth(n: int, primes: tuple[int, ...] = (2, 3, 5, 7, 11, 13)) -> bool:
    """Whether ``n`` has no prime factor outside ``primes``."""
    for prime in primes:
        while n % prime == 0:
            n //= prime
    return n == 1


def nearest_smooth(n: int) -> int:
    """The 13-smooth integer nearest ``n`` (the smaller of two as near)."""
    for distance in range(n):
        for candidate in (n - distance, n + distance):
            if candidate > 0 and is_smooth(candidate):
                return candidate
    return 1


def fast_fft_size(n: int) -> int:
    """The smallest 5-smooth size >= ``n``: within a few percent of ``n``, where the next
    power of two can be half again as long (T + 2H = 22,400 -> 22,500, not 32,768)."""
    while not is_smooth(n, (2, 3, 5)):
        n += 1
    return n


def nearest_smooth_range(low: int, high: int) -> list[int]:
    """:func:`nearest_smooth` of every ``n`` in ``[low, high]`` (``low >= 1``), in one
    pass: each row of a table of ratios at once, where thousands of searches took a
    second."""
    smooth = [n for n in range(max(1, low - 64), high + 65) if is_smooth(n)]
    nearest = []
    for n in range(low, high + 1):
        above = bisect.bisect_left(smooth, n)
        below = above - 1 if above == len(smooth) or smooth[above] != n else above
        if below < 0 or above == len(smooth):  # beyond the window's smooth numbers: search
            nearest.append(nearest_smooth(n))
        else:
            nearest.append(smooth[below] if n - smooth[below] <= smooth[above] - n else smooth[above])
    return nearest
