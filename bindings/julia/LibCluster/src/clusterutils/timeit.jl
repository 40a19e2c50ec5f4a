# ClusterUtils' performance helper.

"""
    @timeit reps expr

The mean wall time, in seconds, of `reps` runs of `expr` (evaluated in the
caller's scope).
"""
macro timeit(reps, expr)
    quote
        local n = $(esc(reps))
        local total = 0.0
        for _ in 1:n
            total += @elapsed $(esc(expr))
        end
        total / n
    end
end
