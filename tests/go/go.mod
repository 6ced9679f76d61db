module kboxgo

go 1.19
