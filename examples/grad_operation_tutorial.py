"""MindSpore's GradOperation tutorial (求导), run on gradserve with only the imports changed.

Every ``print`` of the tutorial is kept, in order; the extra sections at the end print get_all=True,
get_all together with get_by_list, and the third derivative of Sin.
"""
# In [1]
import numpy as np

import gradserve.nn as nn
import gradserve.ops as ops
from gradserve import Parameter, ParameterTuple, Tensor
from gradserve import dtype as mstype

# 定义输出x和y
x = Tensor([[0.8, 0.6, 0.2], [1.8, 1.3, 1.1]], dtype=mstype.float32)
y = Tensor([[0.11, 3.3, 1.1], [1.1, 0.2, 1.4], [1.1, 2.2, 0.3]], dtype=mstype.float32)

# 定义矩阵相乘网络Net
class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        # 矩阵相乘
        self.matmul = ops.MatMul()
        # 定义权重
        self.z = Parameter(Tensor(np.array([1.0], np.float32)), name='z')
    def construct(self, x, y):
        x = x * self.z
        out = self.matmul(x, y)
        return out

# In [2]
# 定义网络输入的一阶求导
class GradNetWrtX(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad_op = ops.GradOperation()
    def construct(self, x, y):
        gradient_function = self.grad_op(self.net)
        return gradient_function(x, y)

output = GradNetWrtX(Net())(x, y)
print(output)

# In [3]
# 定义网络权重的一阶求导
class GradNetWrtZ(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.params = ParameterTuple(net.trainable_params())
        self.grad_op = ops.GradOperation(get_by_list=True)
    def construct(self, x, y):
        gradient_function = self.grad_op(self.net, self.params)
        return gradient_function(x, y)

output = GradNetWrtZ(Net())(x, y)
print(output[0])

# In [4]
# 定义网络的一阶求导,控制梯度值缩放
class GradNetWrtN(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad_op = ops.GradOperation(sens_param=True)
        # 定义梯度值缩放
        self.grad_wrt_output = Tensor([[0.1, 0.6, 0.2], [0.8, 1.3, 1.1]], dtype=mstype.float32)
    def construct(self, x, y):
        gradient_function = self.grad_op(self.net)
        return gradient_function(x, y, self.grad_wrt_output)
output = GradNetWrtN(Net())(x, y)
print(output)

# In [5]
# 导入stop_gradient模块
from gradserve.ops import stop_gradient


class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.matmul = ops.MatMul()

    def construct(self, x, y):
        out1 = self.matmul(x, y)
        out2 = self.matmul(x, y)
        # 停止计算out2算子的梯度
        out2 = stop_gradient(out2)
        out = out1 + out2
        return out

class GradNetWrtX(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad_op = ops.GradOperation()

    def construct(self, x, y):
        gradient_function = self.grad_op(self.net)
        return gradient_function(x, y)

output = GradNetWrtX(Net())(x, y)
print(output)

# In [6]
class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.matmul = ops.MatMul()

    def construct(self, x, y):
        out1 = self.matmul(x, y)
        out2 = self.matmul(x, y)
        # out2 = stop_gradient(out2)
        out = out1 + out2
        return out

class GradNetWrtX(nn.Cell):
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad_op = ops.GradOperation()

    def construct(self, x, y):
        gradient_function = self.grad_op(self.net)
        return gradient_function(x, y)

output = GradNetWrtX(Net())(x, y)
print(output)

# In [7]
import gradserve.nn as nn
from gradserve import Tensor


# 定义基于Sin算子的网络模型
class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.sin = ops.Sin()
    def construct(self, x):
        out = self.sin(x)
        return out
# 一阶求导
class Grad(nn.Cell):
    def __init__(self, network):
        super().__init__()
        self.grad = ops.GradOperation()
        self.network = network
    def construct(self, x):
        gout = self.grad(self.network)(x)
        return gout

# 二阶求导
class GradSec(nn.Cell):
    def __init__(self, network):
        super().__init__()
        self.grad = ops.GradOperation()
        self.network = network
    def construct(self, x):
        gout = self.grad(self.network)(x)
        return gout

net = Net()
firstgrad = Grad(net)
secondgrad = GradSec(firstgrad)
x_train = Tensor(np.array([3.1415926]))
output = secondgrad(x_train)
# 打印结果
print(output)

# ---- Beyond the tutorial: the other flag combinations and a third derivative ----

class MatMulNet(nn.Cell):
    """The tutorial's first Net: (x * z) @ y."""
    def __init__(self):
        super().__init__()
        self.matmul = ops.MatMul()
        self.z = Parameter(Tensor(np.array([1.0], np.float32)), name='z')
    def construct(self, x, y):
        return self.matmul(x * self.z, y)

class GradNetWrtAll(nn.Cell):
    """get_all=True: gradients for x and y."""
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.grad_op = ops.GradOperation(get_all=True)
    def construct(self, x, y):
        return self.grad_op(self.net)(x, y)

dx, dy = GradNetWrtAll(MatMulNet())(x, y)
print("get_all dx:")
print(dx)
print("get_all dy:")
print(dy)

class GradNetWrtAllAndZ(nn.Cell):
    """get_all=True with get_by_list=True: ((dx, dy), (dz,))."""
    def __init__(self, net):
        super().__init__()
        self.net = net
        self.params = ParameterTuple(net.trainable_params())
        self.grad_op = ops.GradOperation(get_all=True, get_by_list=True)
    def construct(self, x, y):
        return self.grad_op(self.net, self.params)(x, y)

(dx, dy), (dz,) = GradNetWrtAllAndZ(MatMulNet())(x, y)
print("get_all+get_by_list dx:")
print(dx)
print("get_all+get_by_list dy:")
print(dy)
print("get_all+get_by_list dz:")
print(dz)

thirdgrad = GradSec(GradSec(Grad(Net())))
print("third derivative of sin at 3.1415926:")
print(thirdgrad(x_train))
