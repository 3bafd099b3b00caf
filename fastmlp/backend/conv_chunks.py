"""Conv2D's fused path as separate ops, run chunk after chunk: the GPU's way.

``conv_act_pool_forward`` / ``_backward`` of the CUDA backend (and of the CPU
backend when its one-kernel path can't run, see ``cpu.fused_conv_chunks``)
call the backend's own im2col, matmul, fused pooling and col2im ops on one
chunk of images after another, in row 0 of the scratch buffers. On the GPU the
batch is one chunk (``conv_chunk_bytes`` is None), so forward's cols are still
there for backward: backward must follow its forward with the scratch as forward
left it (Conv2D calls them so).
"""


def _views(cols, zt, w2, rows):
    # (cols (C*KH*KW, rows), zt (rows, M)): C-contiguous views of scratch row 0
    m, ckk = w2.shape
    return cols[0, :ckk * rows].reshape(ckk, rows), zt[0, :rows * m].reshape(rows, m)


def forward(be, y, argmax, cols, zt, x, w2, b, edges, kh, kw, stride, pad, oh, ow, code, alpha, k, pstride):
    for i0, i1 in zip(edges[:-1].tolist(), edges[1:].tolist()):
        cc, z = _views(cols, zt, w2, (i1 - i0) * oh * ow)
        be.im2col(cc, x[i0:i1], kh, kw, stride, pad)
        be.matmul(z, cc.T, w2.T)
        be.conv_bias_act_pool_forward(y[i0:i1], argmax[i0:i1], z, b, oh, ow, code, alpha, k, pstride)


def backward(be, dx, dwt, db, cols, dzt, x, w2, dy, y, argmax, edges, kh, kw, stride, pad, oh, ow, code, alpha,
             k, pstride):
    count = len(edges) - 1
    for c, (i0, i1) in enumerate(zip(edges[:-1].tolist(), edges[1:].tolist())):
        cc, d = _views(cols, dzt, w2, (i1 - i0) * oh * ow)
        if count > 1:        # one chunk: forward's cols are still in the scratch
            be.im2col(cc, x[i0:i1], kh, kw, stride, pad)
        be.conv_bias_act_pool_backward(d, db[c], dy[i0:i1], y[i0:i1], argmax[i0:i1], oh, ow, code, alpha, k,
                                       pstride)
        be.matmul(dwt[c], cc, d)
        if dx is not None:
            be.matmul(cc, w2.T, d.T)
            be.col2im(dx[i0:i1], cc, kh, kw, stride, pad)
